"""``stalerl train``: the off-policy RL loop on stale rollouts (docs/DESIGN.md#stale-k, #reliability), top to bottom.

One *step* = generate until the stale buffer can be consumed, pop the oldest generation batch,
run ``optim.mini_batches`` optimizer updates on it, log, evaluate, checkpoint::

    while step < steps:
        while not buffer.ready():                # stale-k: a FIFO of generation batches
            buffer.push(make_rollout_batch())    # generate -> reward -> advantages -> behaviour log-probs
        batch = buffer.pop()
        for mini_batch in split(batch, m):       # each trajectory used once
            update(mini_batch)                   # micro-batches, objective, clip, AdamW (skip non-finite)
        log(); evaluate(); checkpoint()

With ``stale.mode=async`` the inner ``while`` is replaced by a rollout worker process that
generates ahead, within the staleness bound, while the trainer trains
(:mod:`stalerl.staleness.async_rollout`); the trainer sends it a policy snapshot after each step.

Reliability (docs/DESIGN.md#reliability): a non-finite loss or gradient skips the update and is counted;
``optim.max_nonfinite_in_row`` in a row end the run, recorded as a crash at that step with the
last good checkpoint intact. Checkpoints are atomic and ``resume`` continues exactly.
"""

from __future__ import annotations

import math
import random
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stalerl import objectives
from stalerl.data.prompts import PromptSampler, build_prompts, prompt_limits
from stalerl.models import precision
from stalerl.models.device import resolve_device
from stalerl.models.logprobs import completion_log_probs
from stalerl.objectives.core import Stat
from stalerl.rewards.reward import build_reward_fn
from stalerl.rollout.batch import RolloutBatch, make_rollout_batch
from stalerl.rollout.generation import generate
from stalerl.run_files import RunFiles, read_steps, run_summary
from stalerl.runtime import choose_threads, set_threads
from stalerl.staleness.buffer import StaleBuffer
from stalerl.training import checkpoint as ckpt
from stalerl.training import rundir
from stalerl.training.config import TrainConfig, to_dict, validate
from stalerl.training.logger import EVAL_PROBLEMS_KEY, make_run_logger
from stalerl.training.loss_terms import build_loss_terms
from stalerl.training.schedule import build_scheduler


class TrainingCrashed(RuntimeError):
    """Too many consecutive non-finite updates."""


@dataclass
class RunResult:
    """What :func:`train` returns."""

    run_dir: Path
    steps_done: int
    crashed_at: int | None
    final_metrics: dict[str, Any] = field(default_factory=dict)
    crash_reason: str | None = None


@dataclass
class LoopState:
    """Counters saved with every checkpoint."""

    step: int = 0
    updates: int = 0
    generated_batches: int = 0
    skipped_updates: int = 0
    nonfinite_in_row: int = 0


# ============================================================================ setup

def load_policy(config: TrainConfig, progress: bool = True):
    """The policy model and tokenizer: the warm-started testbed or any HF causal LM directory/name."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    mc = config.model
    path = mc.path
    if path == "testbed":
        from stalerl.testbed.warmstart import warm_start

        path = str(warm_start(size=mc.testbed_size, progress=progress))
    precision.check_precision(mc)
    kwargs: dict[str, Any] = {"dtype": precision.storage_dtype(mc)}  # float32 masters for bf16/fp16
    if mc.attn_implementation:
        kwargs["attn_implementation"] = mc.attn_implementation
    local = Path(path).expanduser()
    if local.exists() or path.startswith(("/", ".", "~")) or path.count("/") > 1:
        # a local checkpoint: say what is wrong instead of transformers' hub / tokenizer messages
        if not local.is_dir():
            raise ckpt.CheckpointError(f"model.path={mc.path!r}: no such directory")
        if not (local / "config.json").is_file():
            raise ckpt.CheckpointError(f"model.path={mc.path!r}: {local} holds no config.json "
                             "(a checkpoint saved with save_pretrained is expected)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        reason = " ".join(str(err).split())  # one line
        raise ckpt.CheckpointError(f"model.path={mc.path!r} could not be loaded: {reason}") from None
    model = ckpt.load_model(path, f"model.path={mc.path!r}", **kwargs)
    if not tokenizer("What is 1+1?", add_special_tokens=False)["input_ids"]:
        # transformers builds an empty tokenizer for a directory without tokenizer files
        raise ckpt.CheckpointError(f"model.path={mc.path!r}: its tokenizer encodes text to nothing (are the tokenizer "
                         "files missing? save the tokenizer with save_pretrained next to the model)")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if mc.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model.to(resolve_device(mc.device))
    model.train()
    return model, tokenizer, path


def default_run_dir(config: TrainConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = config.objective.name.rpartition(":")[2]  # a user class "path/file.py:Class" -> "Class"
    return Path("runs") / f"{name}-s{config.stale.staleness}-{stamp}"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _compute(config, model):
    """Scoring passes run in ``model.dtype`` over float32 masters (autocast); generation uses
    :func:`precision.generation_model` instead."""
    return precision.autocast(config.model, model)


# ============================================================================ updates

def _slice(batch: RolloutBatch, index: torch.Tensor, device) -> dict[str, torch.Tensor]:
    """Rows of a batch, padded to the longest prompt and response among them, on ``device``."""
    return batch.micro_batch(index, device)


def _micro_batches(batch: RolloutBatch, rows: torch.Tensor, config) -> list[torch.Tensor]:
    """The micro-batches of the mini-batch ``rows``: ``optim.micro_batch_size`` rows each, or, with
    ``optim.max_tokens_per_micro_batch``, the rows sorted by length and packed greedily so that a
    micro-batch's padded size (rows x (longest prompt + longest response), as :meth:`RolloutBatch.micro_batch`
    builds it) stays within the budget; a row longer than the budget goes alone. The objective
    normalises by mini-batch totals (``batch_stats``), so the split changes only float rounding."""
    budget = config.optim.max_tokens_per_micro_batch
    if budget is None:
        return list(rows.split(config.optim.micro_batch_size))
    plen, rlen = batch.prompt_lengths[rows].long(), batch.response_lengths[rows].long().clamp(min=1)
    order = torch.argsort(plen + rlen, stable=True).tolist()
    micros, current, longest_p, longest_r = [], [], 0, 0
    for i in order:
        p, r = max(longest_p, int(plen[i])), max(longest_r, int(rlen[i]))
        if current and (len(current) + 1) * (p + r) > budget:
            micros.append(rows[current])
            current, p, r = [], int(plen[i]), int(rlen[i])
        current.append(i)
        longest_p, longest_r = p, r
    if current:
        micros.append(rows[current])
    return micros


def _current_log_prob(model, micro, config, with_grad: bool):
    with torch.set_grad_enabled(with_grad), _compute(config, model):
        return completion_log_probs(
            model, micro["input_ids"], micro["attention_mask"], micro["response_mask"].shape[1],
            temperature=config.rollout.temperature, chunk_size=config.model.logprob_chunk_size,
            compute_entropy=with_grad,
        )


def _stats_from_gradient_pass(micros: list) -> bool:
    """Whether the mini-batch statistics come from the gradient pass itself rather than an extra
    no-grad pass: with a single micro-batch both run the same parameters on the same rows and give
    the same log-probs (``tests/test_training.py::test_one_micro_batch_scores_the_mini_batch_once``),
    so one forward pass per update is saved."""
    return len(micros) == 1


def update(config, model, optimizer, objective, batch: RolloutBatch, rows: torch.Tensor, state: LoopState,
           loss_terms=None):
    """One optimizer update on the mini-batch ``rows`` of ``batch``; returns its metrics and diagnostics.
    ``loss_terms`` (:mod:`stalerl.training.loss_terms`) adds the KL and entropy terms when set."""
    device = next(model.parameters()).device
    micro_rows = _micro_batches(batch, rows, config)
    micros = [_slice(batch, r, device) for r in micro_rows]
    rollout_lp = [m.get("rollout_log_prob") for m in micros]
    rollout_lp = None if any(x is None for x in rollout_lp) else rollout_lp

    # Mini-batch statistics (M2PO's M̂2, RandomTraj's N_acc, AC-MIS-PO's quantile) come from the
    # current policy on the whole mini-batch: one extra no-grad pass, only for objectives needing it.
    needs_current = objective.uses_batch_stats and objective.mini_batch_scoped
    first = _current_log_prob(model, micros[0], config, with_grad=True) if needs_current and \
        _stats_from_gradient_pass(micros) else None
    if first is not None:
        current = [first[0].detach()]
    else:
        current = [_current_log_prob(model, m, config, with_grad=False)[0] for m in micros] if needs_current \
            else [m["old_log_prob"] for m in micros]
    stats = objective.batch_stats(
        current, [m["old_log_prob"] for m in micros], [m["advantages"] for m in micros],
        [m["response_mask"] for m in micros], rollout_log_prob=rollout_lp,
        horizon=config.rollout.max_new_tokens,  # verl's constant response length, whatever the split
    )

    optimizer.zero_grad(set_to_none=True)
    parts: list[dict[str, Stat]] = []  # per micro-batch metric statistics, pooled by reduce_metrics
    finite = True
    diag = {"traj_log_ratio": [], "traj_accepted": [], "entropy": [], "ratio": []}
    for micro in micros:
        log_prob, entropy = first if first is not None else _current_log_prob(model, micro, config, with_grad=True)
        out = objective(
            log_prob, micro["old_log_prob"], micro["advantages"], micro["response_mask"],
            rollout_log_prob=micro.get("rollout_log_prob"), batch_stats=stats,
        )
        loss, extra_metrics = out.loss, {}
        if loss_terms is not None:
            extra, extra_metrics = loss_terms(micro, log_prob, entropy, stats, objective.config.loss_agg_mode,
                                              objective.config.loss_scale_factor)
            loss = loss + extra
        if not torch.isfinite(loss):
            finite = False
            break
        loss.backward()
        parts.append(_micro_metrics(out, entropy, micro["response_mask"], extra_metrics))
        _record_diagnostics(diag, out, log_prob, micro, entropy)

    grad_norm = float("nan")
    if finite:
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip))
        finite = math.isfinite(grad_norm)
    if finite:
        optimizer.step()
        state.nonfinite_in_row = 0
    else:
        optimizer.zero_grad(set_to_none=True)
        state.skipped_updates += 1
        state.nonfinite_in_row += 1
    state.updates += 1

    metrics = objectives.reduce_metrics(parts, batch=stats.metrics)  # one value per mini-batch
    for key in ("train/tokens", "train/entropy"):  # a first micro-batch that was not finite
        metrics.setdefault(key, 0.0)
    metrics["train/grad_norm"] = grad_norm
    metrics["train/skipped"] = 0.0 if finite else 1.0
    return metrics, diag


def _micro_metrics(out, entropy, response_mask, token_means: dict[str, float] | None = None) -> dict[str, Stat]:
    """A micro-batch's metric statistics: the objective's, the token entropy, the token count, and
    ``token_means`` (the KL/entropy loss terms' per-token means) pooled weighted by tokens."""
    mask = response_mask.float()
    entropy_sum, tokens = torch.stack([(entropy.detach().float() * mask).sum(), mask.sum()]).tolist()  # one transfer
    terms = {key: Stat.ratio(value * tokens, tokens) for key, value in (token_means or {}).items()}
    return {**out.stats, **terms, "train/entropy": Stat.ratio(entropy_sum, tokens), "train/tokens": Stat.total(tokens)}


def _record_diagnostics(diag, out, log_prob, micro, entropy, per_micro: int = 64) -> None:
    """Per-trajectory log rho and acceptance; a sample of (entropy, ratio) token pairs."""
    extras = out.extras
    if "traj_log_ratio" in extras:
        diag["traj_log_ratio"] += extras["traj_log_ratio"].float().cpu().tolist()
    if "traj_accepted" in extras:
        diag["traj_accepted"] += extras["traj_accepted"].cpu().tolist()
    mask = micro["response_mask"].bool()
    ratio = torch.exp(objectives.core.log_ratio(log_prob.detach(), micro["old_log_prob"]))[mask]
    ent = entropy.detach()[mask]
    if ratio.numel():
        pick = torch.linspace(0, ratio.numel() - 1, min(per_micro, ratio.numel())).long()
        diag["ratio"] += ratio[pick].float().cpu().tolist()
        diag["entropy"] += ent[pick].float().cpu().tolist()


# ============================================================================ evaluation

@torch.no_grad()
def eval_due(config, step: int) -> bool:
    """Whether training step ``step`` (>= 1) ends with a held-out evaluation: every
    ``eval.every`` steps from ``eval.from_step`` on, and the last step."""
    every = config.eval.every
    periodic = bool(every) and step >= config.eval.from_step and step % every == 0
    return periodic or step == config.steps


def evaluate(config, model, tokenizer, prompts, reward_fn, step: int) -> dict[str, float]:
    """avg@n (and pass@k) on the held-out prompts, with a fixed seed per step (the training
    sampler's random state is not disturbed)."""
    from stalerl.evaluation.metrics import summarize

    if not prompts:
        return {}
    n = config.eval.samples
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed * 7919 + step)
        sampling_model = precision.generation_model(model, config.model)
        gen = generate(
            sampling_model, tokenizer, [p.text for p in prompts], group_size=n, temperature=config.eval.temperature,
            top_p=config.rollout.top_p if config.eval.top_p is None else config.eval.top_p,
            max_new_tokens=config.rollout.max_new_tokens, batch_size=config.rollout.batch_size,
            engine=config.rollout.engine, max_batch_tokens=config.rollout.max_batch_tokens,
        )
        del sampling_model
    scored = reward_fn(gen.texts, [p.answer for p in prompts for _ in range(n)])
    correct = np.array(scored.correct, dtype=float).reshape(len(prompts), n)
    summary = summarize(correct)
    out = {f"eval/{k}": float(v) for k, v in summary.items() if isinstance(v, (int, float))}
    out["eval/accuracy"] = float(correct.mean())
    out["eval/response_length_mean"] = gen.response_mask.sum(-1).float().mean().item()
    out[EVAL_PROBLEMS_KEY] = correct.mean(axis=1).tolist()  # per problem, for paired statistics
    return out


def eval_problems_seed(config) -> int:
    """Seed of the held-out testbed problems (``eval.problems_seed``; older runs: seed + 1)."""
    return config.seed + 1 if config.eval.problems_seed is None else config.eval.problems_seed


# ============================================================================ the loop

def train(config: TrainConfig, *, resume: str | Path | None = None, progress: bool | None = None) -> RunResult:
    """Run ``stalerl train``; returns a :class:`RunResult` (a crash is a result, not an exception).

    Nothing is written before the command is known valid (:func:`stalerl.training.rundir.prepare`),
    and the run directory has one writer at a time (:class:`~stalerl.training.rundir.RunLock`)."""
    validate(config)
    _set_threads(config)
    resolve_device(config.model.device)
    run_dir, resume_from, restart = rundir.prepare(config, resume, default_run_dir(config))
    rundir.warn_unused_staleness(config)
    rundir.make_dir(run_dir)
    with rundir.RunLock(run_dir):
        rundir.start(run_dir, config, new=not resume, restart=restart)
        return _train(config, run_dir, resume_from, config.progress if progress is None else progress)


def _train(config: TrainConfig, run_dir: Path, resume_from: Path | None, progress: bool) -> RunResult:
    """The loop itself, under the run directory's lock (see :func:`train`)."""
    checkpoint_root = RunFiles(run_dir).checkpoints
    seed_everything(config.seed)
    model, tokenizer, model_path = load_policy(config, progress=progress)
    if resume_from is not None:
        loaded = ckpt.load_model(resume_from, f"checkpoint {resume_from}", dtype=next(model.parameters()).dtype)
        model.load_state_dict(loaded.state_dict())
        del loaded
    train_prompts, skipped_train = build_prompts(
        config.data.train, split=config.data.train_split if config.data.train != "testbed" else "train",
        size=config.data.testbed_train_size if config.data.train == "testbed" else config.data.limit,
        tokenizer=tokenizer, data_config=config.data, seed=config.seed, **prompt_limits(model, config.rollout.max_new_tokens),
    )
    eval_prompts, _ = build_prompts(
        config.data.eval, split=config.data.eval_split if config.data.eval != "testbed" else "test",
        size=config.data.eval_size, tokenizer=tokenizer, data_config=config.data, seed=eval_problems_seed(config),
        **prompt_limits(model, config.rollout.max_new_tokens),
    ) if config.data.eval_size > 0 else ([], 0)
    sampler = PromptSampler(train_prompts, seed=config.seed)
    objective = build_objective(config)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.optim.lr, betas=tuple(config.optim.betas), weight_decay=config.optim.weight_decay,
    )
    scheduler = build_scheduler(optimizer, config.optim, total_updates=config.steps * config.optim.mini_batches)
    loss_terms = build_loss_terms(config, model, model_path)
    buffer = StaleBuffer(config.stale.staleness, config.optim.mini_batches)
    reward_fn = build_reward_fn(config.reward)
    record_rollout = objective.requires_rollout_log_prob or getattr(objective.config, "reference", "") == "rollout"
    state = LoopState()

    if resume_from is not None:
        saved = ckpt.load_state(resume_from)
        optimizer.load_state_dict(saved["optimizer"])
        if "scheduler" in saved:
            scheduler.load_state_dict(saved["scheduler"])
        buffer.load_state_dict(saved["buffer"])
        objective.load_state_dict(saved["objective"])
        sampler.load_state_dict(saved["sampler"])
        state = LoopState(**saved["loop"])
        set_rng_state(saved["rng"])
    logger = make_run_logger(run_dir, config, resume_step=state.step if resume_from else None)
    bar = _progress_bar(config.steps, state.step, progress)
    crashed_at, crash_reason = None, None
    last: dict[str, Any] = {}
    m = config.optim.mini_batches
    generation_limit = _generation_limit(config)
    rollouts = None  # async mode: the rollout worker process (stalerl.staleness.async_rollout)
    try:
        if config.stale.mode == "async":
            from stalerl.staleness.async_rollout import AsyncRollouts

            rollouts = AsyncRollouts(config, model_path, model, buffer, sampler, state, record_rollout)
            logger.log_event({"event": "async_worker_start", "pid": rollouts.pid, "step": state.step})
        if state.step == 0 and resume_from is None:
            start = evaluate(config, model, tokenizer, eval_prompts, reward_fn, step=0)
            start["data/skipped_prompts"] = float(skipped_train)
            start.update({f"data/skipped_prompts_{r}": float(n) for r, n in getattr(skipped_train, "reasons", {}).items()})
            logger.log_step(0, start)
            last.update(start)

        while state.step < config.steps:
            t_step = time.perf_counter()
            # 1. Fill the stale buffer: each new batch comes from the current policy.
            fresh: dict[str, float] = {}
            if rollouts is not None:  # async: batches come from the worker, within the staleness bound
                batch, infos, waited = rollouts.next_batch(state)
                for info in infos:
                    fresh = _merge_fresh(fresh, info)
                fresh["timing_s/wait_rollout"] = waited
            else:
                while not buffer.ready() and state.generated_batches < generation_limit:
                    generated = make_rollout_batch(config, model, tokenizer, sampler, reward_fn, state.updates, record_rollout)
                    buffer.push(generated)
                    state.generated_batches += 1
                    fresh = _merge_fresh(fresh, generated.info)
                batch = buffer.pop(drain=state.generated_batches >= generation_limit)

            # 2. m optimizer updates on the oldest batch, each trajectory used once.
            t_train = time.perf_counter()
            order = torch.randperm(len(batch))
            update_metrics = []
            for rows in order.chunk(m):
                metrics, diag = update(config, model, optimizer, objective, batch, rows, state, loss_terms=loss_terms)
                metrics["train/lr"] = scheduler.get_last_lr()[0]
                scheduler.step()
                metrics["train/staleness"] = float(state.updates - 1 - batch.policy_version)
                logger.log_update({"step": state.step + 1, "update": state.updates - 1, **metrics})
                logger.log_diagnostics({"step": state.step + 1, "update": state.updates - 1, **diag})
                update_metrics.append(metrics)
                if state.nonfinite_in_row >= config.optim.max_nonfinite_in_row:
                    raise TrainingCrashed(
                        f"{state.nonfinite_in_row} consecutive updates had a non-finite loss or gradient "
                        f"(optim.max_nonfinite_in_row={config.optim.max_nonfinite_in_row})"
                    )
            t_train = time.perf_counter() - t_train
            state.step += 1
            if rollouts is not None:
                rollouts.publish(model, state)  # the policy snapshot of version state.updates

            # 3. Log the step: the fresh rollout, the consumed data, the updates.
            record = dict(fresh)
            record.update(_mean_dicts(update_metrics))
            stale = [u["train/staleness"] for u in update_metrics]
            record.update({
                "train/staleness_min": min(stale), "train/staleness_max": max(stale),
                "train/data_reward_mean": batch.rewards.mean().item(),
                "train/data_policy_version": float(batch.policy_version),
                "train/skipped_updates_total": float(state.skipped_updates),
                "train/updates": float(state.updates),
                "timing_s/update_actor": t_train,
                "timing_s/step": time.perf_counter() - t_step,
            })
            record["perf/tokens_per_s"] = record.get("perf/generated_tokens", 0.0) / max(record["timing_s/step"], 1e-9)
            if eval_due(config, state.step):
                record.update(evaluate(config, model, tokenizer, eval_prompts, reward_fn, step=state.step))
            logger.log_step(state.step, record)
            last.update(record)
            _advance(bar, record)

            # 4. Checkpoint (atomic).
            if (config.checkpoint_every and state.step % config.checkpoint_every == 0) or state.step == config.steps:
                if rollouts is not None:
                    rollouts.before_checkpoint(sampler, state)  # received batches + sampler state
                _save(checkpoint_root, state, model, tokenizer, optimizer, buffer, objective, sampler, config, scheduler)
    except TrainingCrashed as err:
        crashed_at, crash_reason = state.step + 1, str(err)
        logger.log_event({"event": "crash", "step": crashed_at, "reason": crash_reason, "updates": state.updates})
    finally:
        if rollouts is not None:
            rollouts.close()
        if bar is not None:
            bar.close()
        logger.close()
        if hasattr(reward_fn, "close"):
            reward_fn.close()

    result = RunResult(run_dir, state.step, crashed_at, last, crash_reason)
    _write_summary(run_dir, config, result, model_path)
    if config.plots:
        _plots(run_dir)
    return result


# ============================================================================ helpers

def build_objective(config: TrainConfig):
    """The run's objective; hyperparameters that follow from the run fill in unless given:
    RandomTraj's generator ``seed`` is the run's seed (each study seed draws differently), and
    AC-MIS-PO's ``updates_per_train_step`` is ``optim.mini_batches`` (its warm-up counts
    training steps)."""
    hparams = dict(config.objective.hparams)
    fields = objectives.defaults(config.objective.name)
    if "seed" in fields:
        hparams.setdefault("seed", config.seed)
    if "updates_per_train_step" in fields:
        hparams.setdefault("updates_per_train_step", config.optim.mini_batches)
    return objectives.build(config.objective.name, **hparams)


def _set_threads(config: TrainConfig) -> int:
    """Size this process's torch threads once, before the model loads (:mod:`stalerl.runtime`):
    the trainer is process 0 of the run's 1 (sync) or 2 (async, with the rollout worker)."""
    processes = 2 if config.stale.mode == "async" else 1
    return set_threads(choose_threads(processes=processes, threads=config.runtime.threads, cores=config.runtime.cores))


def _save(root, state, model, tokenizer, optimizer, buffer, objective, sampler, config, scheduler=None) -> None:
    payload = {
        "optimizer": optimizer.state_dict(),
        "objective": objective.state_dict(),
        "sampler": sampler.state_dict(),
        "loop": vars(state).copy(),
        "rng": rng_state(),
        "config": to_dict(config),
    }
    if scheduler is not None:
        payload["scheduler"] = scheduler.state_dict()
    ckpt.save_checkpoint(root, state.step, model, tokenizer, payload, keep=config.keep_checkpoints, buffer=buffer)


def _generation_limit(config) -> float:
    """Generation batches worth making in sync mode: unbounded (the last ``s/m`` batches wait in the
    final checkpoint, so a resume with more steps continues exactly), except when the staleness
    reaches beyond the run: then only the ``steps`` batches the run consumes
    (:func:`stalerl.training.rundir.warn_unused_staleness` says so)."""
    s, m = config.stale.staleness, config.optim.mini_batches
    return config.steps if s > (config.steps - 1) * m else math.inf


def _merge_fresh(previous: dict[str, float], info: dict[str, float]) -> dict[str, float]:
    """The newest batch's rollout metrics; times and token counts add up over the step's batches."""
    merged = dict(info)
    for key in ("timing_s/gen", "timing_s/reward", "timing_s/old_log_prob", "perf/generated_tokens"):
        merged[key] = previous.get(key, 0.0) + info.get(key, 0.0)
    return merged


def _mean_dicts(records: list[dict[str, float]]) -> dict[str, float]:
    keys = {k for r in records for k in r}
    out = {}
    for key in keys:
        values = [r[key] for r in records if key in r and r[key] is not None]
        finite = [v for v in values if math.isfinite(v)]
        out[key] = float(np.mean(finite)) if finite else float("nan")
    if "train/grad_norm" in keys:
        norms = [r["train/grad_norm"] for r in records if math.isfinite(r.get("train/grad_norm", float("nan")))]
        out["train/grad_norm_max"] = max(norms) if norms else float("nan")
    return out


def _progress_bar(total: int, initial: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="train", unit="step", file=sys.stderr, dynamic_ncols=True)


def _advance(bar, record) -> None:
    if bar is None:
        return
    shown = {
        "reward": record.get("rollout/reward_mean"),
        "acc": record.get("rollout/accuracy"),
        "eval": record.get("eval/accuracy"),
        "stale": record.get("train/staleness_max"),
    }
    bar.set_postfix({k: f"{v:.3g}" for k, v in shown.items() if v is not None and math.isfinite(v)}, refresh=False)
    bar.update(1)


def _write_summary(run_dir: Path, config: TrainConfig, result: RunResult, model_path: str) -> None:
    import json

    summary = run_summary(to_dict(config), read_steps(run_dir), model=model_path, steps_done=result.steps_done,
                          crashed_at=result.crashed_at, crash_reason=result.crash_reason)
    rundir.atomic_write_text(RunFiles(run_dir).summary, json.dumps(summary, indent=2), "the run summary")


def _plots(run_dir: Path) -> None:
    try:
        from stalerl.evaluation.plots import learning_curves
    except ImportError:
        return
    try:
        learning_curves([run_dir], RunFiles(run_dir).curves)
    except Exception as err:  # a plot must never lose a finished run
        warnings.warn(f"stalerl: could not draw curves ({err}); the run's logs are complete", stacklevel=2)
