"""Typed configuration of ``stalerl train``: dataclasses, YAML files and ``key=value`` overrides.

Every option is documented where it is declared. A run is configured by, in order: the defaults
below, an optional YAML file (``--config file.yaml``), then ``section.key=value`` overrides on the
command line, in the syntax of verl's (Hydra's) command line: ``key=value``, ``+key=value`` and
``~key`` for the keys of a mapping option, YAML values (``1e-6``, ``null``, ``[1, 2]``,
``{tau: 0.04}``) and ``${section.key}`` interpolation (docs/OPTIONS.md, "Overrides"). OmegaConf
reads, merges and interpolates; the dataclasses type and check the result. An unknown key or a
value of the wrong type is a :class:`ConfigError` that names the key (``optim.lr: expected a
number, got 'fast'``).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import io
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf import errors as oc_errors

from stalerl.errors import ConfigError


# ---------------------------------------------------------------------------- per-field checks
# Each option declares its range next to its type: ``lr: float = checked(5e-5, greater(0))``. A
# check returns what is wrong (``"must be > 0"``) or None. Besides the declared checks, every float
# option must be finite and every integer option must fit in 64 bits (``check_fields``), so a field
# declared the plain way (``x: float = 1.0``) is still checked for that.

Check = typing.Callable[[Any], "str | None"]

#: Smallest verifier memory limit (MiB) that leaves math-verify room to work (it holds ~62 MiB).
MIN_VERIFIER_MEMORY_MB = 128


def checked(default: Any = dataclasses.MISSING, *checks: Check, factory: Any = dataclasses.MISSING,
            check: tuple[Check, ...] = ()) -> Any:
    """A dataclass field with range checks: ``checked(1.0, greater(0))`` or
    ``checked(factory=lambda: [...], check=(length(2),))``. ``None`` always passes the checks."""
    return field(default=default, default_factory=factory, metadata={"checks": tuple(checks) + tuple(check)})


def at_least(low: float) -> Check:
    return lambda v: None if v >= low else f"must be >= {low}"


def greater(low: float) -> Check:
    return lambda v: None if v > low else f"must be > {low}"


def within(low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> Check:
    def check(v):
        ok = (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
        return None if ok else f"must lie in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    return check


def one_of(*choices: Any) -> Check:
    return lambda v: None if v in choices else f"must be one of {', '.join(repr(c) for c in choices)}"


def zero_or_at_least(low: float) -> Check:
    return lambda v: None if v == 0 or v >= low else f"must be 0 (no limit) or >= {low}"


def length(n: int) -> Check:
    return lambda v: None if len(v) == n else f"must hold exactly {n} values, got {len(v)}"


def non_empty(v: Any) -> str | None:
    return None if len(v) else "must not be empty"


def each(inner: Check) -> Check:
    def check(values):
        for i, v in enumerate(values):
            if (why := inner(v)) is not None:
                return f"[{i}]={v!r} {why}"
        return None
    return check


def check_fields(config: Any, prefix: str = "") -> None:
    """Run every field's declared checks (recursively), plus: floats finite, integers within 64 bits."""
    for f in dataclasses.fields(config):
        key, value = prefix + f.name, getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            check_fields(value, key + ".")
            continue
        if value is None:
            continue
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, float) and not math.isfinite(item):
                raise ConfigError(f"{key}={value!r} must be finite")
            if isinstance(item, int) and not isinstance(item, bool) and not -2**63 <= item < 2**63:
                raise ConfigError(f"{key}={value!r} does not fit in 64 bits")
        for check in f.metadata.get("checks", ()):
            why = check(value)
            if why is not None:
                raise ConfigError(f"{key} {why}, got {value!r}" if not why.startswith("[") else f"{key}{why}")


@dataclass
class ModelConfig:
    """The policy model."""

    path: str = "testbed"
    """``testbed`` (the embedded model, warm-started on CPU and cached) or a Hugging Face causal
    LM: a local directory saved with ``save_pretrained``, or a hub name when online."""
    testbed_size: Literal["tiny", "small"] = "small"
    """Size of the embedded testbed model: ``tiny`` (tests) or ``small`` (default)."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Compute dtype of the policy. ``float32``: everything in float32. ``bfloat16`` /
    ``float16``: mixed precision: float32 master weights, gradients and AdamW states; the scoring
    passes (behaviour log-probs, training) under ``torch.autocast`` in this dtype, and generation
    from a copy of the weights in this dtype (as the async rollout worker's copy); log-probs and
    the objective stay float32 (:mod:`stalerl.models.precision`). With ``master_weights=false``
    the weights and AdamW states themselves are stored in this dtype. ``float16`` has no loss
    scaling: prefer ``bfloat16``."""
    device: str = "auto"
    """``auto`` (CUDA when available, else CPU), ``cpu`` or ``cuda``/``cuda:N``."""
    attn_implementation: str | None = None
    """transformers attention backend (``sdpa``, ``eager``, ``flash_attention_2``); None = default."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (saves memory on large models)."""
    logprob_chunk_size: int = checked(1024, at_least(1))
    """Token positions per chunk when computing log-probs and entropy (memory-light path)."""
    master_weights: bool = True
    """With ``dtype`` bfloat16/float16: keep float32 master weights and AdamW states (true) or
    store the weights and optimizer states in ``dtype`` (false: half the memory, but AdamW steps
    of lr 1e-6 round away in bf16; warns). No effect with ``float32``."""


@dataclass
class DataConfig:
    """Training and evaluation prompts."""

    train: str = "testbed"
    """``testbed`` (procedural arithmetic), a JSONL/JSON/Parquet file, or a ``datasets`` name."""
    eval: str = "testbed"
    """Held-out prompts for periodic evaluation: ``testbed`` (held-out split), a file or a name."""
    train_split: str = "train"
    """Split to load when ``train`` is a ``datasets`` name."""
    eval_split: str = "test"
    """Split to load when ``eval`` is a ``datasets`` name."""
    question_field: str = "problem"
    """Field holding the question in file/hub rows."""
    answer_field: str = "answer"
    """Field holding the reference answer in file/hub rows."""
    template: str = "auto"
    """Prompt template: ``auto`` (the testbed's own short template for the testbed, ``m2po``
    otherwise), ``m2po`` (the M2PO paper's), ``plain`` (the question alone), or a string with
    ``{question}``."""
    chat_template: bool = False
    """Wrap the prompt in the tokenizer's chat template (instruct models)."""
    max_prompt_length: int = checked(512, at_least(1))
    """Prompts longer than this many tokens are skipped and counted (``data/skipped_prompts``)."""
    testbed_levels: list[int] = checked(factory=lambda: [1, 2, 3], check=(non_empty, each(one_of(1, 2, 3))))
    """Difficulty levels of testbed problems."""
    testbed_train_size: int = checked(20000, at_least(1))
    """Number of testbed training problems (cycled through in a seeded order)."""
    eval_size: int = checked(128, at_least(0))
    """Number of held-out problems used by the periodic evaluation (0 = no evaluation)."""
    limit: int | None = checked(None, at_least(1))
    """Use only the first N training rows of a file/hub dataset."""
    system_prompt: str | None = None
    """A system message put before the question when prompts are chat messages (``chat_template``
    or verl's ``prompt`` column of messages that has no system message of its own); None = none."""


@dataclass
class RolloutConfig:
    """Generation of the rollouts (transformers ``generate`` with a KV cache)."""

    prompts_per_step: int = checked(16, at_least(1))
    """P: prompts per generation batch (the M2PO paper: 256)."""
    group_size: int = checked(8, at_least(1))
    """G: responses per prompt (the M2PO paper: 8)."""
    temperature: float = checked(1.0, greater(0))
    """Sampling temperature (the papers: 1.0). Log-probs are computed at this temperature."""
    top_p: float = checked(1.0, within(0, 1, low_open=True))
    """Nucleus sampling threshold."""
    max_new_tokens: int = checked(64, at_least(1))
    """Maximum response length in tokens."""
    batch_size: int = checked(128, at_least(1))
    """Most sequences (rows) generated at once; ``max_batch_tokens`` may allow fewer."""
    engine: Literal["continuous", "static"] = "continuous"
    """``continuous``: continuous batching, only live rows decode and a row that ends is replaced by
    a waiting prompt (:mod:`stalerl.rollout.engine`); ``static``: one ``model.generate`` per chunk
    of rows, each decoding until its longest row ends (the same samples per seed as before the
    continuous engine existed). Same distribution, different samples for one seed."""
    max_batch_tokens: int | None = checked(262144, at_least(1))
    """Token budget of a generation batch: rows x (longest prompt + ``max_new_tokens``), the KV-cache
    positions it can need, at most this (one row always runs); None = rows only. The KV cache costs
    ``2 x layers x kv_heads x head_dim x bytes`` per position: Qwen3-1.7B in bf16 112 KiB, so 28 GiB
    at the default."""


@dataclass
class RewardConfig:
    """Verifiable reward (math-verify on the last ``\\boxed{}``, in worker processes)."""

    format_score: float = checked(0.1, within(0, 1))
    """Reward of an extracted but wrong answer (M2PO paper 0.1; released code 0.0)."""
    timeout_s: float = checked(5.0, greater(0))
    """Seconds per check before the worker is killed; the answer then counts as extracted but wrong
    (``format_score``) and is counted under ``rollout/count_timeout``."""
    memory_limit_mb: int = checked(1024, zero_or_at_least(MIN_VERIFIER_MEMORY_MB))
    """Address-space limit of each verifier worker in MiB; 0 = no limit. A worker holds about 62 MiB
    once math-verify is imported, so a limit below ``MIN_VERIFIER_MEMORY_MB`` (128) is refused: every
    check would fail and score 0."""
    num_workers: int = checked(2, at_least(1))
    """Verifier worker processes."""
    function: str | None = None
    """A user reward ``module:function`` or ``path.py:function`` taking
    ``(completions, answers) -> list[float]``; replaces math-verify. It may also ask for
    ``prompts``, ``extras`` and the rows' fields by name, or be verl's per-sample
    ``compute_score(data_source, solution_str, ground_truth, extra_info)`` (docs/OPTIONS.md)."""


@dataclass
class ObjectiveSection:
    """The policy objective (``stalerl objectives`` lists them)."""

    name: str = "m2po"
    """Objective or preset name from :mod:`stalerl.objectives`."""
    hparams: dict[str, Any] = field(default_factory=dict)
    """Keyword hyperparameters, e.g. ``{tau: 0.04}``; unknown names are an error."""


@dataclass
class OptimConfig:
    """Optimizer and update schedule."""

    lr: float = checked(5e-5, greater(0))
    """Constant AdamW learning rate. The default suits the embedded testbed model (0.8M
    parameters; on-policy GRPO at 2e-5..1e-4 raises its held-out accuracy, 3e-4 and above make it
    fall); the M2PO paper uses 1e-6 for 1.7B-32B models."""
    weight_decay: float = checked(0.01, at_least(0))
    """AdamW weight decay (the M2PO paper: 0.01)."""
    betas: list[float] = checked(factory=lambda: [0.9, 0.999], check=(length(2), each(within(0, 1, high_open=True))))
    """AdamW betas ``[beta1, beta2]``, each in [0, 1)."""
    grad_clip: float = checked(1.0, greater(0))
    """Gradient-norm clipping threshold (> 0; a huge value disables clipping)."""
    mini_batches: int = checked(4, at_least(1))
    """m: optimizer mini-batches per generation batch, each trajectory used once (paper: 256/64 = 4)."""
    micro_batch_size: int = checked(32, at_least(1))
    """Sequences per forward/backward pass (gradient accumulation inside a mini-batch)."""
    max_nonfinite_in_row: int = checked(5, at_least(1))
    """Stop the run after this many consecutive skipped (non-finite) updates."""
    max_tokens_per_micro_batch: int | None = checked(None, at_least(1))
    """Token budget of a training micro-batch (rows x (longest prompt + longest response) after
    trimming); rows are sorted by length and packed up to it, so long responses do not run out of
    memory and short ones are not processed a few at a time. None: ``micro_batch_size`` rows per
    micro-batch. Either way the loss is normalised over the whole mini-batch."""
    schedule: Literal["constant", "linear", "cosine"] = "constant"
    """Learning-rate decay after the warmup: ``constant`` (the M2PO paper's), ``linear`` or
    ``cosine`` down to ``min_lr_ratio * lr`` at the last update (verl's ``optim.lr_scheduler_type``
    ``constant``/``cosine``, TRL's ``lr_scheduler_type``). See :mod:`stalerl.training.schedule`."""
    warmup_steps: int = 0
    """Linear warmup from 0 to ``lr``, in *optimizer updates* (a training step is
    ``mini_batches`` updates; the learning rate acts per update, so the warmup is counted in the
    unit that changes it, as verl's ``optim.lr_warmup_steps`` and TRL's ``warmup_steps``). 0 = none
    (the papers)."""
    min_lr_ratio: float = 0.0
    """Floor of the ``linear``/``cosine`` decay as a fraction of ``lr`` (verl's
    ``optim.min_lr_ratio``; 0 = decay to zero). Unused by ``constant``."""


@dataclass
class StalenessConfig:
    """Stale-k rollouts (docs/DESIGN.md#stale-k)."""

    staleness: int = checked(8, at_least(0))
    """s: the data of update u was generated by the policy of update ``u - s`` (rounded down to
    its generation batch), a multiple of ``optim.mini_batches``; 0 is on-policy."""
    mode: Literal["sync", "async"] = "sync"
    """``sync``: generate and train in turn in one process; the staleness is exactly ``s`` (to
    ``s + m - 1``) and resume is exact. ``async``: generation runs in its own process, overlapped
    with training, and ``s`` is an upper bound: a batch's first update is at most ``s`` updates
    newer than the policy that generated it (fresher data when generation lags). Needs ``s >= m``
    to overlap anything. See :mod:`stalerl.staleness.async_rollout`."""


@dataclass
class EvalConfig:
    """Periodic held-out evaluation."""

    every: int = checked(10, at_least(0))
    """Evaluate every N training steps (and at the start and the end); 0 = only start and end."""
    samples: int = checked(4, at_least(1))
    """n samples per problem (avg@n)."""
    temperature: float = checked(1.0, greater(0))
    """Sampling temperature of the evaluation (the papers: 1.0)."""
    top_p: float | None = checked(None, within(0, 1, low_open=True))
    """Nucleus sampling of the evaluation; ``None`` uses ``rollout.top_p`` (the MinPRO paper
    evaluates with 0.7, the M2PO papers with 1.0)."""
    problems_seed: int | None = 1
    """Seed of the held-out testbed problems, the same for every run so that conditions and seeds
    are compared on identical problems (paired statistics); ``None``: the run's ``seed + 1``."""
    from_step: int = checked(0, at_least(0))
    """The periodic evaluations (every ``every`` steps) begin at this step; the start and the end
    are evaluated regardless. A study that reads only a run's last evaluations sets it to skip
    the ones in between (each costs a generation pass over the held-out set)."""


@dataclass
class AlgorithmConfig:
    """Loss terms and rollout shaping on top of the objective; every one is off by default, so the
    papers' settings are unchanged. See docs/OPTIONS.md."""

    kl_loss_coef: float = 0.0
    """Weight of a KL(policy || reference) term added to the loss (verl's
    ``actor.kl_loss_coef`` with ``use_kl_loss``, TRL's ``beta``; DAPO and the M2PO paper: 0, no
    KL). The reference is the initial policy, loaded once, frozen, only when this is > 0."""
    kl_loss_type: Literal["k1", "kl", "abs", "k2", "mse", "k3", "low_var_kl", "k1+", "k3+", "low_var_kl+"] = "low_var_kl"
    """KL estimator per token, verl's ``actor.kl_loss_type`` (``core_algos.kl_penalty``):
    ``k1``/``kl`` = log pi - log pi_ref, ``abs``, ``k2``/``mse`` = (log pi - log pi_ref)^2 / 2,
    ``k3``/``low_var_kl`` = exp(log pi_ref - log pi) - (log pi_ref - log pi) - 1 (clamped as
    verl); a ``+`` suffix uses the k2 gradient with the estimator's value (verl's straight-through).
    verl's default: ``low_var_kl``."""
    entropy_coeff: float = 0.0
    """Weight of an entropy bonus: the loss gets ``- entropy_coeff * entropy`` (verl's
    ``actor.entropy_coeff``, default 0; the papers use none)."""
    mask_truncated_completions: bool = False
    """Drop completions that hit ``rollout.max_new_tokens`` without EOS from the loss (TRL's
    ``mask_truncated_completions``; DAPO section 3.4 "overlong filtering"). They still count in
    the group advantages."""
    overlong_buffer_len: int = 0
    """DAPO's soft overlong punishment (eq. 13): the last ``overlong_buffer_len`` tokens before
    ``rollout.max_new_tokens`` are a buffer in which the reward falls linearly to
    ``-overlong_penalty_factor`` (verl's ``reward_model.overlong_buffer.len``; DAPO: 4096 of 20480).
    0 = off."""
    overlong_penalty_factor: float = 1.0
    """Penalty at the maximum length, in reward units (verl's
    ``reward_model.overlong_buffer.penalty_factor``; DAPO: 1.0)."""
    dynamic_sampling: bool = False
    """DAPO's dynamic sampling (section 3.2, eq. 11): drop groups whose rewards are all equal
    (zero advantage) and generate more prompts until the batch holds ``rollout.prompts_per_step``
    groups with signal (verl's ``algorithm.filter_groups.enable``)."""
    dynamic_sampling_max_tries: int = 10
    """Generation rounds per batch before giving up (verl's ``filter_groups.max_num_gen_batches``,
    DAPO recipe 10). A batch still short after them is filled with dropped groups (zero advantage)
    and counted in ``rollout/dynamic_sampling_unfilled``."""


@dataclass
class RuntimeConfig:
    """Threads of the run's processes (see :mod:`stalerl.runtime` and docs/PERFORMANCE.md, "Threads")."""

    threads: int | None = checked(None, at_least(1))
    """torch intra-op threads of each of the run's torch processes (the trainer and, with
    ``stale.mode=async``, the rollout worker). None = ``runtime.cores`` divided among those
    processes (sync: all of them; async: the trainer gets the larger half)."""
    cores: int | None = checked(None, at_least(1))
    """Cores the run may use; None = ``$OMP_NUM_THREADS`` when it is set, else the cores this
    process may run on (its CPU affinity, e.g. ``taskset``). ``stalerl reproduce --jobs J`` gives
    each of its J parallel runs ``cores // J``."""


@dataclass
class TrainConfig:
    """Everything ``stalerl train`` needs."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    objective: ObjectiveSection = field(default_factory=ObjectiveSection)
    optim: OptimConfig = field(default_factory=OptimConfig)
    stale: StalenessConfig = field(default_factory=StalenessConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    steps: int = checked(40, at_least(1))
    """Training steps; a step consumes one generation batch, i.e. ``optim.mini_batches`` updates."""
    seed: int = checked(0, within(0, 2**32 - 1))
    """Seed of data order, sampling and initialisation, in [0, 2**32 - 1] (numpy's range; the
    loop derives further seeds from it by multiplication, which must stay within 64 bits)."""
    run_dir: str | None = None
    """Output directory; default ``runs/<objective>-s<staleness>-<timestamp>``."""
    checkpoint_every: int = checked(10, at_least(0))
    """Write a checkpoint every N steps (and at the end); 0 = only at the end."""
    keep_checkpoints: int = checked(2, at_least(1))
    """Checkpoints kept on disk (oldest removed first)."""
    tensorboard: bool = True
    """Also write TensorBoard event files."""
    plots: bool = True
    """Write PNG learning curves into the run directory at the end."""
    progress: bool = True
    """Show a progress bar."""
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    """KL and entropy terms, overlong handling, dynamic sampling (all off by default)."""
    logger: list[str] | None = None
    """Trackers besides the JSONL files: any of ``tensorboard``, ``wandb`` (verl's
    ``trainer.logger``). None = ``[tensorboard]`` if ``tensorboard`` else ``[]`` (``tensorboard``
    stays as the older switch). W&B runs offline with ``WANDB_MODE=offline``."""
    wandb_project: str = "stalerl"
    """W&B project of the run (the run is named after the run directory)."""
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)


# ---------------------------------------------------------------------------- loading

def to_dict(config: Any) -> dict[str, Any]:
    """The config as plain dicts/lists (what ``config.yaml`` in a run directory holds)."""
    return dataclasses.asdict(config)


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a nested dict, checking every key and type."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields), key=str)
    if unknown:
        raise ConfigError(_unknown_key(f"{prefix}{unknown[0]}", [prefix + k for k in fields]))
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, prefix + name)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value if value is not None else {}, key + ".")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(option, value, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0])
    if tp is Any:
        return value
    if origin is Literal:
        if value in args and type(value) in {type(a) for a in args}:
            return value
        raise ConfigError(f"{key}: expected one of {', '.join(map(repr, args))}, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)] if args else list(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    return value


def _unknown_key(key: str, valid: list[str]) -> str:
    """``unknown config key 'optim.lrr' (did you mean 'optim.lr'?); valid keys here: ...``"""
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown config key {key!r}{hint}; valid keys here: {', '.join(valid)}"


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, *,
                resolved: bool = False) -> TrainConfig:
    """Defaults <- YAML file <- overrides, interpolated, then validated into a :class:`TrainConfig`.

    ``path`` is a YAML file or the name of a shipped config (``testbed``, ``prosperity``, ...;
    :func:`packaged_configs` lists them). ``overrides`` are ``key=value`` strings in the syntax of
    verl's command line (:func:`_apply_override`). ``resolved=True`` reads a file that holds a
    config already interpolated (a run's ``config.yaml``): a ``${`` in its strings is literal.

    >>> config = load_config("testbed", ["objective.name=grpo", "eval.temperature=${rollout.temperature}"])
    >>> config.objective.name, config.stale.staleness, config.optim.mini_batches, config.eval.temperature
    ('grpo', 48, 4, 1.0)
    """
    cfg = copy.deepcopy(_defaults())
    if path is not None:
        path = resolve_config_path(path)
        _merge_file(cfg, path, resolved)
    for item in overrides or []:
        _apply_override(cfg, item)
    try:
        data = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except oc_errors.OmegaConfBaseException as err:
        raise _config_error(err) from None
    config = from_dict(TrainConfig, data)
    validate(config)
    return config


# OmegaConf reads the YAML, applies the overrides and resolves ``${...}``; :func:`from_dict` then
# types the resolved values. The schema OmegaConf sees has the dataclasses' sections, keys and
# defaults but types every option ``Any``: OmegaConf 2.3 refuses a ``Literal`` annotation outright,
# and its typed nodes convert values stalerl refuses (``model.path=true`` would become the string
# ``'True'``, ``tensorboard=1`` would become ``True``), with messages of its own.

@functools.cache
def _defaults() -> DictConfig:
    """The defaults as OmegaConf's structured config, built once (each load works on a copy)."""
    return OmegaConf.structured(_schema(TrainConfig))


@functools.cache
def _schema(cls: type) -> type:
    """``cls`` as OmegaConf's structured config: the same keys, defaults and nested sections, every
    option typed ``Any``. A section refuses a key it does not declare; a mapping option
    (``objective.hparams``) takes any key."""
    hints = typing.get_type_hints(cls)
    fields = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            section = _schema(hints[f.name])
            fields.append((f.name, section, field(default_factory=section)))
        elif f.default_factory is not dataclasses.MISSING:
            fields.append((f.name, Any, field(default_factory=f.default_factory)))
        else:
            fields.append((f.name, Any, field(default=f.default)))
    return dataclasses.make_dataclass(cls.__name__, fields)


def _merge_file(cfg: DictConfig, path: Path, resolved: bool = False) -> None:
    """Merge the YAML file ``path`` into ``cfg``, section by section (``resolved``: see :func:`load_config`)."""
    where = f"config file {str(path)!r}"
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{where} cannot be read: {err}") from None
    try:
        loaded = OmegaConf.load(io.StringIO(text))
    except yaml.constructor.ConstructorError as err:
        raise ConfigError(f"{where}: {_duplicate_key(text, err)}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{where} is not valid YAML: {' '.join(str(err).split())}") from None
    except OSError:  # OmegaConf's refusal of a number or boolean as the whole file
        loaded = None
    except oc_errors.OmegaConfBaseException as err:
        raise _config_error(err, where) from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"{where} must hold a mapping of sections")
    for key, value in OmegaConf.to_container(loaded).items():  # unresolved: ${...} is resolved at the end
        key, value = str(key), _literal(value) if resolved else value
        if key not in cfg.keys():
            raise ConfigError(f"{where}: {_unknown_key(key, list(cfg.keys()))}")
        if _child(cfg, key) is not None and _is_section(_child(cfg, key)) and not isinstance(value, dict):
            raise ConfigError(f"{where}: {key}: expected a mapping of its keys, got {value!r}")
        try:
            OmegaConf.update(cfg, key, value, merge=True)
        except oc_errors.OmegaConfBaseException as err:
            raise _config_error(err, where) from None


_OVERRIDE = re.compile(r"(?P<op>\+\+|\+|~)?(?P<key>[^=]*)(?:=(?P<value>.*))?", re.DOTALL)


def _apply_override(cfg: DictConfig, item: str) -> None:
    """Apply one command-line override to ``cfg``, in the syntax of verl's (Hydra's) command line.

    ``key=value`` sets a key; ``+key=value`` adds a key to a mapping option (``objective.hparams``;
    refused when the key is there already); ``++key=value`` adds or sets; ``~key`` (or
    ``~key=value``, removing only that value) removes a key of a mapping option. The value is read
    as YAML, the way OmegaConf's ``from_dotlist`` reads it (``1e-6``, ``true``, ``null``, ``[1, 2]``,
    ``{tau: 0.04}``, ``'quoted'``); a value that is not valid YAML is taken as the string it is, and
    an empty one is the empty string. A mapping given to a section (``optim={lr: 1e-6}``) sets those
    of its keys; a mapping given to a mapping option replaces it whole (``objective.hparams={}``
    clears it). ``${...}`` is interpolated once the config is complete, so it sees every override."""
    op, key, raw = _OVERRIDE.fullmatch(item).group("op", "key", "value")
    key, where = key.strip(), f"override {item!r}"
    if not key or (raw is None and op != "~"):
        raise ConfigError(f"{where} must look like section.key=value (or +key=value, ~key)")
    value = _parse_value(raw, where) if raw is not None else None
    try:
        parts, node = key.split("."), cfg
        for i, part in enumerate(parts[:-1]):
            if part not in node.keys() and not _is_section(node):
                node = None  # a new key inside a mapping option: OmegaConf.update creates the path
                break
            if part not in node.keys():
                raise ConfigError(f"{where}: {_unknown_key('.'.join(parts[:i + 1]), _keys(node, parts[:i]))}")
            if _child(node, part) is None:
                raise ConfigError(f"{where}: {'.'.join(parts[:i + 1])!r} is not a section")
            node = _child(node, part)
        name = parts[-1]
        exists = node is not None and name in node.keys()
        section = node is not None and _is_section(node)
        if op == "~":
            if not exists:
                raise ConfigError(f"{where}: {key} is not set; there is nothing to remove")
            if section:
                raise ConfigError(f"{where}: {key} is a config key and cannot be removed; set it with {key}=VALUE "
                                  "(~ removes a key of a mapping option such as objective.hparams)")
            current = node[name]
            current = OmegaConf.to_container(current) if OmegaConf.is_config(current) else current
            if raw is not None and current != value:
                raise ConfigError(f"{where}: {key} is {current!r}, not {value!r}; nothing was removed")
            del node[name]
            return
        if section and not exists:
            raise ConfigError(f"{where}: {_unknown_key(key, _keys(node, parts[:-1]))}")
        if op == "+" and exists:
            raise ConfigError(f"{where}: {key} is already set; change it with {key}=VALUE "
                              "(+ adds a key that is not there, ++ adds or changes)")
        merge = section and _child(node, name) is not None and _is_section(_child(node, name))
        if merge and not isinstance(value, dict):
            raise ConfigError(f"{where}: {key}: expected a mapping of its keys, got {value!r}")
        OmegaConf.update(cfg, key, value, merge=merge)  # a section merges; an option's value is replaced
    except oc_errors.OmegaConfBaseException as err:
        raise _config_error(err, where) from None


def _parse_value(raw: str, where: str) -> Any:
    """An override's value read as YAML by OmegaConf (its ``from_dotlist``), as plain Python."""
    if not raw.strip():
        return ""
    try:
        return OmegaConf.to_container(OmegaConf.from_dotlist([f"value={raw}"]))["value"]
    except yaml.constructor.ConstructorError as err:
        raise ConfigError(f"{where}: {_duplicate_key(raw, err)}") from None
    except yaml.YAMLError:
        return raw  # not YAML (``Q: {question} A:``): the string as typed
    except oc_errors.GrammarParseError as err:
        raise ConfigError(f"{where}: the value is not a valid ${{...}} interpolation ({str(err).splitlines()[0]}); "
                          "write ${section.key}, or \\${ for a literal ${") from None
    except oc_errors.OmegaConfBaseException as err:
        raise ConfigError(f"{where}: {str(err).splitlines()[0]}") from None


def _literal(value: Any) -> Any:
    """``value`` with ``${`` escaped in every string, so that OmegaConf keeps it as written."""
    if isinstance(value, str):
        return value.replace("${", "\\${")
    if isinstance(value, dict):
        return {k: _literal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_literal(v) for v in value]
    return value


def _is_section(node: DictConfig) -> bool:
    """Whether ``node`` is a config section (a dataclass) rather than a mapping option."""
    return OmegaConf.get_type(node) is not dict


def _child(node: DictConfig, key: str) -> DictConfig | None:
    """The mapping under ``key`` of ``node``; None for any other value (read without resolving it)."""
    if OmegaConf.is_missing(node, key) or OmegaConf.is_interpolation(node, key):
        return None
    child = node[key]
    return child if isinstance(child, DictConfig) else None


def _keys(node: DictConfig, parts: list[str]) -> list[str]:
    """The full names of the keys of ``node``, the section at ``parts``."""
    return [".".join([*parts, str(k)]) for k in node.keys()]


def _duplicate_key(text: str, err: yaml.constructor.ConstructorError) -> str:
    """OmegaConf's "found duplicate key" as ``key 'lr' appears twice in the same mapping (lines 2 and
    4); keep one``: the first line is found by walking the YAML's nodes to the mapping named."""
    if not (err.problem or "").startswith("found duplicate key ") or err.problem_mark is None:
        return f"not valid YAML: {' '.join(str(err).split())}"
    key, second = err.problem[len("found duplicate key "):], err.problem_mark.line + 1
    lines = [second]
    stack = [yaml.compose(text)]
    while stack:
        node = stack.pop()
        if isinstance(node, yaml.MappingNode):
            if err.context_mark is not None and node.start_mark.index == err.context_mark.index:
                lines = [k.start_mark.line + 1 for k, _ in node.value if k.value == key] or lines
                break
            stack += [v for pair in node.value for v in pair]
        elif isinstance(node, yaml.SequenceNode):
            stack += node.value
    where = f"lines {lines[0]} and {lines[1]}" if len(lines) > 1 and lines[0] != lines[1] else f"line {lines[0]}"
    return f"key {key!r} appears twice in the same mapping ({where}); keep one"


def _config_error(err: oc_errors.OmegaConfBaseException, where: str = "") -> ConfigError:
    """OmegaConf's error as one line naming the key (its own message spans several lines)."""
    key = getattr(err, "full_key", None) or ""
    message = str(err).splitlines()[0] if str(err) else type(err).__name__
    if isinstance(err, (oc_errors.ConfigKeyError, oc_errors.ConfigAttributeError)) and key:
        section, _, _ = key.rpartition(".")
        cls = TrainConfig
        for part in filter(None, section.split(".")):
            cls = typing.get_type_hints(cls).get(part, dict)
        valid = [f"{section}.{f.name}" if section else f.name for f in dataclasses.fields(cls)] \
            if dataclasses.is_dataclass(cls) else []
        text = _unknown_key(key, valid)
    elif isinstance(err, oc_errors.MissingMandatoryValue):
        text = f"{key}: no value given (the config says '???'); set it with {key}=VALUE"
    elif isinstance(err, (oc_errors.InterpolationResolutionError, oc_errors.GrammarParseError)):
        text = f"{key + ': ' if key else ''}cannot interpolate: {message} (write \\${{ for a literal ${{)"
    else:
        text = f"{key}: {message}" if key else message
    return ConfigError(f"{where}: {text}" if where else text)


def validate(config: TrainConfig) -> None:
    """Every field's declared checks (``Literal`` choices, :func:`check_fields`), then cross-field
    checks, each naming the keys involved."""
    _check_choices(config)
    check_fields(config)
    m = config.optim.mini_batches
    if config.stale.staleness < 0 or config.stale.staleness % m:
        raise ConfigError(
            f"stale.staleness={config.stale.staleness} must be a non-negative multiple of optim.mini_batches={m}"
        )
    total = config.rollout.prompts_per_step * config.rollout.group_size
    if total % m:
        raise ConfigError(
            f"rollout.prompts_per_step * rollout.group_size = {total} trajectories cannot be split "
            f"into optim.mini_batches={m} equal mini-batches"
        )
    _validate_options(config)
    from stalerl import objectives

    try:
        objectives.build(config.objective.name, **config.objective.hparams)
    except ValueError as err:
        raise ConfigError(f"objective: {err}") from None


def _check_choices(config: Any, prefix: str = "") -> None:
    """Every ``Literal`` field holds one of its choices (a config built in Python skips ``_coerce``)."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value, tp = getattr(config, f.name), hints[f.name]
        if dataclasses.is_dataclass(value):
            _check_choices(value, f"{prefix}{f.name}.")
        elif typing.get_origin(tp) is Literal and value not in typing.get_args(tp):
            choices = ", ".join(map(repr, typing.get_args(tp)))
            raise ConfigError(f"{prefix}{f.name}={value!r} must be one of {choices}")


# ---------------------------------------------------------------------------- shipped configs

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
"""The configs shipped inside the package (``examples/configs`` in the repository points here)."""


def packaged_configs() -> dict[str, Path]:
    """Name -> path of every shipped config (``stalerl train --config NAME``)."""
    return {p.stem: p for p in sorted(CONFIG_DIR.glob("*.yaml"))}


def resolve_config_path(path: str | Path) -> Path:
    """``path`` itself when it is a file, else the shipped config of that name."""
    candidate = Path(path)
    if candidate.is_file():
        return candidate
    shipped = packaged_configs()
    name = candidate.name[:-5] if candidate.name.endswith(".yaml") else candidate.name
    if candidate.parent == Path(".") and name in shipped:
        return shipped[name]
    raise ConfigError(
        f"config file {str(path)!r} does not exist and is not the name of a shipped config "
        f"({', '.join(shipped) or 'none found'}); give a YAML file or one of those names"
    )


def _validate_options(config: TrainConfig) -> None:
    """Checks of the schedule, the extra loss terms, overlong handling and the trackers."""
    oc, ac = config.optim, config.algorithm
    if oc.warmup_steps < 0:
        raise ConfigError(f"optim.warmup_steps must be >= 0 (optimizer updates), got {oc.warmup_steps}")
    if not 0.0 <= oc.min_lr_ratio <= 1.0:
        raise ConfigError(f"optim.min_lr_ratio must lie in [0, 1], got {oc.min_lr_ratio}")
    for key, value in {"algorithm.kl_loss_coef": ac.kl_loss_coef, "algorithm.entropy_coeff": ac.entropy_coeff,
                       "algorithm.overlong_penalty_factor": ac.overlong_penalty_factor}.items():
        if not (value >= 0 and value < float("inf")):
            raise ConfigError(f"{key} must be a finite number >= 0, got {value}")
    if not 0 <= ac.overlong_buffer_len < config.rollout.max_new_tokens:
        raise ConfigError(
            f"algorithm.overlong_buffer_len={ac.overlong_buffer_len} must be >= 0 and smaller than "
            f"rollout.max_new_tokens={config.rollout.max_new_tokens} (0 turns the penalty off)"
        )
    if ac.dynamic_sampling_max_tries < 1:
        raise ConfigError(f"algorithm.dynamic_sampling_max_tries must be >= 1, got {ac.dynamic_sampling_max_tries}")
    if ac.dynamic_sampling and config.rollout.group_size < 2:
        raise ConfigError("algorithm.dynamic_sampling needs rollout.group_size >= 2 (a group of one always has "
                          "equal rewards)")
    unknown = sorted(set(config.logger or []) - {"tensorboard", "wandb"})
    if unknown:
        raise ConfigError(f"logger: unknown tracker(s) {unknown}; use any of tensorboard, wandb")
