"""Typed configuration of ``stalerl train``: dataclasses, YAML files and ``key=value`` overrides.

Every option is documented where it is declared. A run is configured by, in order: the defaults
below, an optional YAML file (``--config file.yaml``), then ``section.key=value`` overrides on the
command line. An unknown key or a value of the wrong type is a :class:`ConfigError` that names the
key (``optim.lr: expected a number, got 'fast'``).
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A configuration key is unknown or its value has the wrong type."""


class _YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader, but ``1e-5`` is a float (YAML 1.2; PyYAML's YAML 1.1 needs ``1.0e-5``
    and would give the string ``'1e-5'``)."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*|\.[0-9_]+|[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)?$"
               r"|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"),
    list("-+0123456789."),
)


def _yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_YamlLoader)  # noqa: S506 - a SafeLoader subclass


@dataclass
class ModelConfig:
    """The policy model."""

    path: str = "testbed"
    """``testbed`` (the embedded model, warm-started on CPU and cached) or a Hugging Face causal
    LM: a local directory saved with ``save_pretrained``, or a hub name when online."""
    testbed_size: Literal["tiny", "small"] = "small"
    """Size of the embedded testbed model: ``tiny`` (tests) or ``small`` (default)."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Parameter dtype: ``float32``, ``bfloat16`` or ``float16`` (losses are computed in float32)."""
    device: str = "auto"
    """``auto`` (CUDA when available, else CPU), ``cpu`` or ``cuda``/``cuda:N``."""
    attn_implementation: str | None = None
    """transformers attention backend (``sdpa``, ``eager``, ``flash_attention_2``); None = default."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (saves memory on large models)."""
    logprob_chunk_size: int = 1024
    """Token positions per chunk when computing log-probs and entropy (memory-light path)."""


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
    max_prompt_length: int = 512
    """Prompts longer than this many tokens are skipped and counted (``data/skipped_prompts``)."""
    testbed_levels: list[int] = field(default_factory=lambda: [1, 2, 3])
    """Difficulty levels of testbed problems."""
    testbed_train_size: int = 20000
    """Number of testbed training problems (cycled through in a seeded order)."""
    eval_size: int = 128
    """Number of held-out problems used by the periodic evaluation (0 = no evaluation)."""
    limit: int | None = None
    """Use only the first N training rows of a file/hub dataset."""


@dataclass
class RolloutConfig:
    """Generation of the rollouts (transformers ``generate`` with a KV cache)."""

    prompts_per_step: int = 16
    """P: prompts per generation batch (the M2PO paper: 256)."""
    group_size: int = 8
    """G: responses per prompt (the M2PO paper: 8)."""
    temperature: float = 1.0
    """Sampling temperature (the papers: 1.0). Log-probs are computed at this temperature."""
    top_p: float = 1.0
    """Nucleus sampling threshold."""
    max_new_tokens: int = 64
    """Maximum response length in tokens."""
    batch_size: int = 128
    """Most sequences (rows) generated at once; ``max_batch_tokens`` may allow fewer."""
    engine: Literal["continuous", "static"] = "continuous"
    """``continuous``: continuous batching, only live rows decode and a row that ends is replaced by
    a waiting prompt (:mod:`stalerl.rollout.engine`); ``static``: one ``model.generate`` per chunk
    of rows, each decoding until its longest row ends (the same samples per seed as before the
    continuous engine existed). Same distribution, different samples for one seed."""
    max_batch_tokens: int | None = 262144
    """Token budget of a generation batch: rows x (longest prompt + ``max_new_tokens``), the KV-cache
    positions it can need, at most this (one row always runs); None = rows only. The KV cache costs
    ``2 x layers x kv_heads x head_dim x bytes`` per position: Qwen3-1.7B in bf16 112 KiB, so 28 GiB
    at the default."""


@dataclass
class RewardConfig:
    """Verifiable reward (math-verify on the last ``\\boxed{}``, in worker processes)."""

    format_score: float = 0.1
    """Reward of an extracted but wrong answer (M2PO paper 0.1; released code 0.0)."""
    timeout_s: float = 5.0
    """Seconds per check before the worker is killed; the answer then counts as extracted but wrong
    (``format_score``) and is counted under ``rollout/count_timeout``."""
    memory_limit_mb: int = 1024
    """Address-space limit of each verifier worker."""
    num_workers: int = 2
    """Verifier worker processes."""
    function: str | None = None
    """A user reward ``module:function`` or ``path.py:function`` taking
    ``(completions, answers) -> list[float]``; replaces math-verify."""


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

    lr: float = 5e-5
    """Constant AdamW learning rate. The default suits the embedded testbed model (0.8M
    parameters; on-policy GRPO at 2e-5..1e-4 raises its held-out accuracy, 3e-4 and above make it
    fall); the M2PO paper uses 1e-6 for 1.7B-32B models."""
    weight_decay: float = 0.01
    """AdamW weight decay (the M2PO paper: 0.01)."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """AdamW betas."""
    grad_clip: float = 1.0
    """Gradient-norm clipping threshold."""
    mini_batches: int = 4
    """m: optimizer mini-batches per generation batch, each trajectory used once (paper: 256/64 = 4)."""
    micro_batch_size: int = 32
    """Sequences per forward/backward pass (gradient accumulation inside a mini-batch)."""
    max_nonfinite_in_row: int = 5
    """Stop the run after this many consecutive skipped (non-finite) updates."""


@dataclass
class StalenessConfig:
    """Stale-k rollouts (SPEC §3)."""

    staleness: int = 8
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

    every: int = 10
    """Evaluate every N training steps (and at the start and the end); 0 = only start and end."""
    samples: int = 4
    """n samples per problem (avg@n)."""
    temperature: float = 1.0
    """Sampling temperature of the evaluation (the papers: 1.0)."""


@dataclass
class RuntimeConfig:
    """Threads of the run's processes (see :mod:`stalerl.runtime` and docs/PERFORMANCE.md, "Threads")."""

    threads: int | None = None
    """torch intra-op threads of each of the run's torch processes (the trainer and, with
    ``stale.mode=async``, the rollout worker). None = ``runtime.cores`` divided among those
    processes (sync: all of them; async: the trainer gets the larger half)."""
    cores: int | None = None
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
    steps: int = 40
    """Training steps; a step consumes one generation batch, i.e. ``optim.mini_batches`` updates."""
    seed: int = 0
    """Seed of data order, sampling and initialisation."""
    run_dir: str | None = None
    """Output directory; default ``runs/<objective>-s<staleness>-<timestamp>``."""
    checkpoint_every: int = 10
    """Write a checkpoint every N steps (and at the end); 0 = only at the end."""
    keep_checkpoints: int = 2
    """Checkpoints kept on disk (oldest removed first)."""
    tensorboard: bool = True
    """Also write TensorBoard event files."""
    plots: bool = True
    """Write PNG learning curves into the run directory at the end."""
    progress: bool = True
    """Show a progress bar."""
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
    unknown = sorted(set(data) - set(fields))
    if unknown:
        key = prefix + unknown[0]
        raise ConfigError(f"unknown config key {key!r}; valid keys here: {', '.join(prefix + k for k in fields)}")
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


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` strings (values parsed as YAML: ``1e-5``, ``true``, ``[1,2]``)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        key, raw = item.split("=", 1)
        key = key.strip().lstrip("+")
        try:
            value = _yaml_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
        node[parts[-1]] = value
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Defaults <- YAML file <- overrides, validated into a :class:`TrainConfig`.

    ``path`` is a YAML file or the name of a shipped config (``testbed``, ``prosperity``, ...;
    :func:`packaged_configs` lists them).

    >>> config = load_config("testbed", ["objective.name=grpo"])
    >>> config.objective.name, config.stale.staleness, config.optim.mini_batches
    ('grpo', 64, 4)
    """
    data: dict[str, Any] = {}
    if path is not None:
        path = resolve_config_path(path)
        try:
            loaded = _yaml_load(path.read_text())
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {str(path)!r} is not valid YAML: {err}") from None
        data = loaded or {}
        if not isinstance(data, dict):
            raise ConfigError(f"config file {str(path)!r} must hold a mapping of sections")
    data = apply_overrides(data, overrides or [])
    config = from_dict(TrainConfig, data)
    validate(config)
    return config


def validate(config: TrainConfig) -> None:
    """Cross-field checks, each naming the keys involved."""
    _check_choices(config)
    m = config.optim.mini_batches
    positive = {
        "rollout.prompts_per_step": config.rollout.prompts_per_step,
        "rollout.group_size": config.rollout.group_size,
        "rollout.max_new_tokens": config.rollout.max_new_tokens,
        "rollout.batch_size": config.rollout.batch_size,
        "rollout.max_batch_tokens": 1 if config.rollout.max_batch_tokens is None else config.rollout.max_batch_tokens,
        "optim.mini_batches": m,
        "optim.micro_batch_size": config.optim.micro_batch_size,
        "optim.max_nonfinite_in_row": config.optim.max_nonfinite_in_row,
        "eval.samples": config.eval.samples,
        "steps": config.steps,
    }
    for key, value in {"runtime.threads": config.runtime.threads, "runtime.cores": config.runtime.cores}.items():
        if value is not None:
            positive[key] = value
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"{key} must be >= 1, got {value}")
    for key, value in {"optim.lr": config.optim.lr, "rollout.temperature": config.rollout.temperature}.items():
        if value <= 0:
            raise ConfigError(f"{key} must be > 0, got {value}")
    if not 0 < config.rollout.top_p <= 1:
        raise ConfigError(f"rollout.top_p must lie in (0, 1], got {config.rollout.top_p}")
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
