"""Supervised warm start of the testbed model on CPU, with an on-disk cache.

:func:`warm_start` builds the character tokenizer and a small Qwen3 model, trains it by
next-token cross-entropy on ``prompt + solution + <eos>`` of generated *train* problems
(loss on the completion only), and saves model and tokenizer with ``save_pretrained``
into a cache directory. RL then starts from this checkpoint through
:func:`load_testbed`, which uses ``AutoModelForCausalLM.from_pretrained`` /
``AutoTokenizer.from_pretrained``: the same code path as a real checkpoint.

The supervised data (:mod:`stalerl.testbed.warmstart_data`) shows every valid order of a
solution's independent steps; held-out accuracy is measured by :mod:`stalerl.testbed.accuracy`.

The warm start is deliberately *partial*: it stops while the model solves only part of
the held-out problems when sampling at temperature 1 (the calibration target for the
``small`` model is 10-40%), so that RL has room both to improve and to collapse.

Cache layout: ``<cache>/testbed-<size>-<hash>/`` where ``<cache>`` is ``cache_dir``, else
``$STALERL_CACHE``, else ``~/.cache/stalerl``, and ``<hash>`` covers the model config,
the training recipe, the seed, the number of steps and :data:`CODE_VERSION`. The
directory holds the model (``config.json``, ``model.safetensors``,
``generation_config.json``), the tokenizer files, ``warmstart.json`` (steps, final loss,
held-out accuracy, seconds, ...) and a ``.complete`` marker written last. Training writes
into a temporary sibling directory that is renamed into place with ``os.replace`` only
when complete, and a directory without the marker is never reused, so a warm start that
was killed half-way is redone, not loaded. Processes that need the same checkpoint at once (the
runs of ``stalerl reproduce --jobs J`` on a cold cache) take turns on a lock file beside it
(``.testbed-<size>-<hash>.lock``): one trains, the others wait and then load its result.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from stalerl.errors import UserError
from stalerl.testbed.accuracy import extract_boxed, sample_accuracy
from stalerl.testbed.model import MODEL_SIZES, testbed_model_config
from stalerl.testbed.task import generate_problems
from stalerl.testbed.tokenizer import build_char_tokenizer
from stalerl.testbed.warmstart_data import encode_batch, training_problems

logger = logging.getLogger(__name__)

__all__ = [
    "warm_start",
    "load_testbed",
    "sample_accuracy",
    "extract_boxed",
    "default_cache_dir",
    "WARMSTART_RECIPES",
    "CODE_VERSION",
    "MARKER",
]

#: Bump when a change of this package changes what a warm start produces (invalidates caches).
CODE_VERSION = "2"

#: Name of the marker file written last into a finished cache directory.
MARKER = ".complete"

#: Training recipe per model size. ``steps`` is the default number of optimizer steps;
#: the learning rate warms up linearly for ``warmup`` steps and then stays constant.
#: ``solutions``: ``"sampled"`` trains on worked solutions whose order of independent reductions
#: and of ``+``/``*`` operands is drawn at random (:mod:`stalerl.testbed.solution`), so the model
#: keeps uncertain "forking" decisions; ``"canonical"`` on the one canonical solution.
WARMSTART_RECIPES: dict[str, dict] = {
    "tiny": dict(steps=60, batch_size=32, lr=3e-3, warmup=10, weight_decay=0.0,
                 levels=(1, 2, 3), n_eval=32, grad_clip=1.0, solutions="sampled"),
    # 1000 steps of 32 sequences put the held-out accuracy at temperature 1 at 40% with sampled
    # solutions (level 1: 72%, 2: 40%, 3: 8%), the top of the band 10-40%; with the canonical
    # solution alone it was 23% (~38% at 1200 steps, ~46% at 1400).
    "small": dict(steps=1000, batch_size=32, lr=3e-3, warmup=30, weight_decay=0.0,
                  levels=(1, 2, 3), n_eval=256, grad_clip=1.0, solutions="sampled"),
}


def default_cache_dir() -> Path:
    """``$STALERL_CACHE`` if set, else ``~/.cache/stalerl``."""
    env = os.environ.get("STALERL_CACHE")
    return Path(env).expanduser() if env else Path("~/.cache/stalerl").expanduser()


@contextlib.contextmanager
def _build_lock(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path`` (created if missing) while the block runs, so
    that one process at a time warms up a given checkpoint. Where the platform or the file system
    has no ``flock`` the block runs unlocked: the temporary-directory protocol keeps the cache
    consistent either way, the lock only saves the duplicated training."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        fcntl = None
    handle = None
    if fcntl is not None:
        try:
            handle = open(lock_path, "a")  # noqa: SIM115 - closed below
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                logger.info("waiting for another process's warm start of %s", lock_path.name[1:-5])
                fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError:  # not writable (reported by the build itself) or a file system without flock
            if handle is not None:
                handle.close()
            handle = None
    try:
        yield
    finally:
        if handle is not None:
            handle.close()  # releases the lock


def _clean_dead_temporaries(parent: Path) -> None:
    """Remove the temporary directories of warm starts whose process is gone (killed mid-way); a
    live one (another process warming up the same cache) is left alone."""
    for tmp in parent.glob(".tmp-testbed-*-pid*-*"):
        try:
            pid = int(tmp.name.split("-pid", 1)[1].split("-", 1)[0])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except (ValueError, IndexError, PermissionError):
            continue


def load_testbed(path):
    """Load a warm-started testbed checkpoint: ``(model, tokenizer)``.

    Goes through ``transformers.AutoModelForCausalLM.from_pretrained`` and
    ``AutoTokenizer.from_pretrained``, like any real checkpoint. The model is returned in
    ``eval()`` mode, float32, on CPU; the tokenizer pads on the left.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no testbed checkpoint (config.json) in {path}")
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(path)
    model.eval()
    return model, tokenizer


def _cache_key(config_dict: dict, recipe: dict, seed: int, steps: int) -> str:
    blob = json.dumps(
        {"config": config_dict, "recipe": recipe, "seed": seed, "steps": steps, "code": CODE_VERSION},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def warm_start(
    *,
    size: str = "small",
    cache_dir=None,
    seed: int = 0,
    steps: int | None = None,
    force: bool = False,
    progress: bool = True,
) -> Path:
    """Warm-start (or reuse) the testbed model and return its checkpoint directory.

    Trains a fresh ``size`` model (see :mod:`stalerl.testbed.model`) with AdamW on
    generated train problems (recipe :data:`WARMSTART_RECIPES`), on CPU, deterministically
    for a given ``seed`` (seeded torch RNG, deterministic data); then measures the
    held-out accuracy by sampling at temperature 1 (the starting accuracy an RL run sees)
    and saves everything (see the module docstring for the layout).

    Args:
        size: ``"tiny"`` (tests, seconds) or ``"small"`` (default; about 3 minutes on
            2 CPU cores).
        cache_dir: parent directory of the cache; default ``$STALERL_CACHE`` or
            ``~/.cache/stalerl``.
        seed: seed of the model initialisation, the training data and the evaluation.
        steps: number of optimizer steps; default the recipe's. ``0`` saves the
            untrained initialisation.
        force: retrain even when a complete cached checkpoint exists.
        progress: show a tqdm progress bar with the running loss.

    Returns:
        Path of the checkpoint directory, loadable with :func:`load_testbed`.

    Raises:
        ValueError: unknown ``size`` or negative ``steps``.
    """
    if size not in WARMSTART_RECIPES or size not in MODEL_SIZES:
        raise ValueError(f"unknown testbed size {size!r}; expected one of {sorted(WARMSTART_RECIPES)}")
    recipe = dict(WARMSTART_RECIPES[size])
    if steps is None:
        steps = recipe["steps"]
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
    recipe.pop("steps")

    tokenizer = build_char_tokenizer()
    config = testbed_model_config(
        len(tokenizer),
        size,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    key = _cache_key(config.to_dict(), recipe, seed, steps)
    parent = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    final = parent / f"testbed-{size}-{key}"
    if not force and (final / MARKER).is_file():
        return final
    if parent.exists() and not parent.is_dir():
        raise UserError(f"the testbed cache {parent} is a file; point STALERL_CACHE at a directory")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"the testbed cache {parent} cannot be created ({os.strerror(err.errno or 0)}); "
                        "point STALERL_CACHE at a writable directory") from None
    with _build_lock(parent / f".testbed-{size}-{key}.lock"):
        if not force and (final / MARKER).is_file():  # built by the process that held the lock
            return final
        _build(tokenizer, config, size, recipe, seed, steps, key, parent, final, force, progress)
    return final


def _build(tokenizer, config, size: str, recipe: dict, seed: int, steps: int, key: str, parent: Path,
           final: Path, force: bool, progress: bool) -> None:
    """Train the checkpoint into a temporary sibling of ``final`` and rename it into place."""
    _clean_dead_temporaries(parent)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-testbed-{size}-{key}-pid{os.getpid()}-", dir=parent))
    except OSError as err:
        raise UserError(f"the testbed cache {parent} is not writable ({os.strerror(err.errno or 0)}); "
                        "point STALERL_CACHE at a writable directory") from None
    try:
        info = _train_and_save(tokenizer, config, size, recipe, seed, steps, tmp, progress)
        info["cache_key"] = key
        (tmp / "warmstart.json").write_text(json.dumps(info, indent=2) + "\n")
        (tmp / MARKER).write_text(key + "\n")
        if final.exists():
            # an incomplete leftover (killed run) or a forced rebuild: replace it
            if (final / MARKER).is_file() and not force:
                return  # a concurrent warm start finished first
            shutil.rmtree(final, ignore_errors=True)
        try:
            os.replace(tmp, final)
        except OSError:
            if (final / MARKER).is_file():  # lost a race against a concurrent warm start
                return
            raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _train_and_save(
    tokenizer, config, size: str, recipe: dict, seed: int, steps: int, out: Path, progress: bool
) -> dict:
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM

    t0 = time.time()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
        model.train()
        bs = recipe["batch_size"]
        data = training_problems(steps * bs, seed=seed, levels=recipe["levels"], solutions=recipe["solutions"])
        decay, no_decay = [], []
        for p in model.parameters():
            (no_decay if p.ndim < 2 else decay).append(p)
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": recipe["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
            lr=recipe["lr"],
            betas=(0.9, 0.98),
        )
        warmup = max(1, recipe["warmup"])
        ema = None
        loss_val = float("nan")
        bar = tqdm(range(steps), desc=f"warm start ({config.num_hidden_layers}L/{config.hidden_size}d)",
                   disable=not progress, leave=False)
        for step in bar:
            for g in opt.param_groups:
                g["lr"] = recipe["lr"] * min(1.0, (step + 1) / warmup)
            ids, attn, labels = encode_batch(tokenizer, data[step * bs : (step + 1) * bs], config.max_position_embeddings)
            loss = model(input_ids=ids, attention_mask=attn, labels=labels).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), recipe["grad_clip"])
            opt.step()
            loss_val = float(loss.detach())
            ema = loss_val if ema is None else 0.9 * ema + 0.1 * loss_val
            bar.set_postfix(loss=f"{ema:.3f}")
        bar.close()
        train_seconds = time.time() - t0
        model.eval()
        eval_problems = generate_problems(recipe["n_eval"], split="test", seed=seed, levels=recipe["levels"])
        acc, completions = sample_accuracy(
            model, tokenizer, eval_problems, temperature=1.0, seed=seed, return_details=True
        )
    per_level = {}
    for lv in sorted(set(p.level for p in eval_problems)):
        idx = [i for i, p in enumerate(eval_problems) if p.level == lv]
        per_level[str(lv)] = sum(extract_boxed(completions[i]) == eval_problems[i].answer for i in idx) / len(idx)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return {
        "size": size,
        "seed": seed,
        "steps": steps,
        "recipe": {k: (list(v) if isinstance(v, tuple) else v) for k, v in recipe.items()},
        "final_loss": None if math.isnan(loss_val) else loss_val,
        "final_loss_ema": ema,
        "heldout_accuracy_t1": acc,
        "heldout_accuracy_t1_per_level": per_level,
        "n_eval": len(eval_problems),
        "train_seconds": round(train_seconds, 2),
        "seconds": round(time.time() - t0, 2),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "torch_threads": torch.get_num_threads(),
        "code_version": CODE_VERSION,
        "example_completions": [
            {"prompt": p.prompt, "answer": p.answer, "completion": c}
            for p, c in list(zip(eval_problems, completions, strict=True))[:5]
        ],
    }
