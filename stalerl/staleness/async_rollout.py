"""Async mode (``stale.mode=async``): generation in its own process, overlapped with training.

docs/DESIGN.md#async: generation runs in its own process and training in another, with a bound
on staleness, so that generation and training overlap. This module is that machinery; the loop
(:func:`stalerl.training.loop.train`) only calls :class:`AsyncRollouts`.

Processes and messages
----------------------
* The **trainer** (the process running ``train``) owns the optimizer and the training model.
* The **rollout worker** (:class:`AsyncRolloutWorker`, a ``torch.multiprocessing`` *spawn*
  process) owns its own copy of the model, the prompt sampler and the reward function. It builds
  :class:`~stalerl.rollout.batch.RolloutBatch` es exactly as the sync loop does
  (:func:`stalerl.rollout.batch.make_rollout_batch`: generation, reward, group advantages and the
  behaviour log-probs, computed by the worker's copy, which holds the training model's weights at
  the batch's ``policy_version``), and sends them through a bounded queue.
* After every step (``m`` optimizer updates) the trainer sends a **policy snapshot**: the
  ``state_dict`` tensors packed into one flat CPU tensor per dtype (shared memory) with the
  version number = the number of optimizer updates behind those weights. Before starting a batch
  the worker loads the newest snapshot it has received (older unread ones are dropped).
  With ``model.dtype`` bf16/fp16 the worker's copy is in that dtype and the snapshot is sent in it
  (:func:`pack_state_dict`): the trainer's float32 masters are cast tensor by tensor straight into
  the CPU buffer, so a snapshot costs 2 B per parameter of host (shared) memory and, on the
  trainer's device, one tensor's temporary at a time, never a second copy of the model.

Staleness semantics (the bound)
-------------------------------
Batch ``k`` (0-based) is consumed by updates ``k*m ... k*m + m - 1``. The worker may start batch
``k`` only once it holds a snapshot of version ``>= max(0, k*m - s)``: it runs at most
``s / m`` batches ahead of the trainer. Hence for every batch

    ``0 <= u_first - policy_version <= s``        (``u_first = k*m``, the batch's first update)

and an update's staleness ``u - policy_version`` lies in ``[0, s + m - 1]``. In **sync** mode the
first inequality is an equality once the buffer is full (``policy_version = max(0, k*m - s)``);
in **async** mode ``s`` is an *upper bound*: when generation is the bottleneck the worker starts a
batch late, with a newer snapshot, and the data is fresher than ``s``. When generation is faster
than training the worker waits at the bound and async reproduces the sync versions exactly (see
``tests/test_async.py``). Every update logs its actual staleness (``train/staleness``, the same
formula as in sync mode) and the trainer checks the bound for every batch it consumes
(:class:`StalenessBoundError` if violated, which would be a bug). ``s = 0`` is on-policy in both
modes and leaves nothing to overlap; overlap needs ``s >= m``.

Every batch carries its index (``info["rollout/batch_index"]``); the trainer checks that it
receives ``0, 1, 2, ...`` in order, so each batch is consumed exactly once.

Checkpoint and resume
---------------------
A checkpoint in async mode saves what the trainer holds: the batches already received and not
yet consumed (in the stale buffer's queue, like the sync buffer; the trainer first collects the
batches already finished in the queue), and the worker's prompt-sampler state *after the last
received batch* (as the sampler's state). Generation in flight is discarded. On resume a new worker
starts at the next batch index with that sampler state and the checkpoint's weights (version =
updates done), so no prompt is skipped or drawn twice and the bound holds. The regenerated batches
use other random numbers and possibly a newer policy version than the interrupted run would have,
so async resume is valid but not bit-exact (exact resume is guaranteed in sync mode only).

Threads
-------
The two processes share the run's cores (``runtime.cores``, else ``$OMP_NUM_THREADS``, else the
CPU affinity): the trainer keeps ``ceil(n/2)`` intra-op threads and the worker gets the rest (1
and 1 on 2 cores), unless ``runtime.threads`` fixes the count of each
(:func:`stalerl.runtime.choose_threads`; the loop sets the trainer's, the worker sets its own
first thing). ``tests/test_async.py::test_worker_runs_on_the_threads_it_was_given`` reads the
count inside the worker.

Shutdown
--------
The worker exits when the trainer calls :meth:`AsyncRollouts.close` (normal end, crash or
exception: the loop calls it in ``finally``), when its parent process dies, or after sending an
error. A user error in the worker (a reward function that raises) is re-raised in the trainer as
itself, one line as in sync mode; any other failure becomes :class:`AsyncWorkerError` with its first
line (the traceback is logged at debug level). The trainer never blocks on the worker: a reader
thread moves its messages to an in-process queue, and the trainer polls that queue and the
worker's liveness, so a worker killed by the kernel (even in the middle of a message) ends the run
within about a second with its exit signal (``tests/test_faults.py``). Messages are pickled in the
sending thread, so a failure to share tensors is an error there, not a lost message. The worker
runs in its own process group; ``close`` joins it, terminates/kills it if it does not exit in time,
and then kills the group (its verifier workers), so no process is left behind.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import pickle
import queue as queue_mod
import signal
import sys
import threading
import time
import traceback
from multiprocessing.reduction import ForkingPickler
from typing import Any

import torch
import torch.multiprocessing as tmp

from stalerl.errors import UserError
from stalerl.models.device import resolve_device
from stalerl.models.precision import DTYPES
from stalerl.rewards.reward import build_reward_fn
from stalerl.rollout.batch import RolloutBatch, make_rollout_batch
from stalerl.runtime import available_cores, choose_threads, set_threads, split_cores
from stalerl.staleness.buffer import StaleBuffer

__all__ = [
    "AsyncRollouts",
    "AsyncRolloutWorker",
    "AsyncWorkerError",
    "AsyncWorkerUserError",
    "StalenessBoundError",
    "min_policy_version",
    "pack_state_dict",
    "unpack_state_dict",
    "split_threads",
]

_POLL_S = 0.1

log = logging.getLogger(__name__)


class AsyncWorkerError(RuntimeError):
    """The rollout worker failed (its traceback is in the message) or died."""


class AsyncWorkerUserError(AsyncWorkerError, UserError):
    """A user error raised in the worker (a reward function that raises...): its message is the
    one sync mode gives, and the CLI reports it like any user error (one line, exit status 2)."""


class StalenessBoundError(RuntimeError):
    """A batch's policy is older than the staleness bound allows (a bug, never expected)."""


def min_policy_version(batch_index: int, staleness: int, mini_batches: int) -> int:
    """Oldest policy version allowed to generate batch ``batch_index``: ``max(0, k*m - s)``."""
    return max(0, batch_index * mini_batches - staleness)


def split_threads(n_cpu: int | None = None) -> tuple[int, int]:
    """Intra-op threads ``(trainer, worker)`` for two processes sharing ``n_cpu`` cores (default:
    the cores this process may run on)."""
    trainer, worker = split_cores(n_cpu or available_cores(), 2)
    return trainer, worker


# ============================================================================ snapshots

def pack_state_dict(model, dtype: torch.dtype | None = None) -> dict[str, Any]:
    """The model's weights as one flat CPU tensor per dtype (few shared-memory segments) + layout.

    ``dtype`` (bf16/fp16) converts the floating-point tensors on the way: with float32 masters on a
    GPU the worker gets its compute dtype without a float32 copy. Each tensor is cast and copied on
    its own into the preallocated CPU tensor, so the device never holds more than one tensor's
    temporary (no concatenated copy of the whole model).
    """
    entries, offsets = [], {}
    for name, t in model.state_dict().items():
        target = dtype if dtype is not None and t.is_floating_point() else t.dtype
        off = offsets.get(target, 0)
        entries.append((name, t.detach(), target, off))
        offsets[target] = off + t.numel()
    flats = {dt: torch.empty(n, dtype=dt) for dt, n in offsets.items()}
    for _, t, target, off in entries:
        flats[target][off:off + t.numel()].copy_(t.reshape(-1))
    return {
        "flats": {str(dt): flat for dt, flat in flats.items()},
        "layout": [(name, str(target), off, tuple(t.shape)) for name, t, target, off in entries],
    }


def unpack_state_dict(packed: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`pack_state_dict` (views into the flat tensors)."""
    flats = packed["flats"]
    out = {}
    for name, dt, off, shape in packed["layout"]:
        n = math.prod(shape)
        out[name] = flats[dt][off:off + n].view(shape)
    return out


# ============================================================================ worker process

def _error_message(exc: BaseException) -> tuple:
    """The worker's error for the trainer: its one-line summary, the traceback (logged at debug
    level there) and the exception itself when it can travel (so a user error stays one)."""
    line = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
    try:
        pickle.dumps(exc)
    except Exception:
        exc = None
    return ("error", -1, (line, traceback.format_exc(), exc), None)


def _exit_reason(code: int | None) -> str:
    if code is not None and code < 0:
        name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
        hint = " (the kernel's out-of-memory killer sends this)" if -code == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    return f"exit code {code}"


def _quiet_resource_sharer() -> None:
    """Keep a worker's death to one line: multiprocessing's fd-sharing thread (which hands the
    snapshot tensors to the worker) prints a traceback through ``sys.excepthook`` when the worker
    dies in the middle of a handover. Those go to the debug log; every other exception is passed on
    to the hook that was installed before. Installed once per process."""
    hook = sys.excepthook
    if getattr(hook, "_stalerl_quiet", False):
        return

    def quiet(exc_type, exc, tb):
        frames = traceback.extract_tb(tb)
        if frames and frames[0].filename.endswith(os.path.join("multiprocessing", "resource_sharer.py")):
            log.debug("fd handover to the rollout worker failed (it died): %s: %s", exc_type.__name__, exc)
            return
        hook(exc_type, exc, tb)

    quiet._stalerl_quiet = True
    sys.excepthook = quiet


def _parent_alive() -> bool:
    parent = tmp.parent_process()
    return parent is None or parent.is_alive()


def _worker_main(config, model_path: str, start_batch: int, end_batch: int, sampler_state: dict,
                 record_rollout: bool, threads: int, snapshots, results, stop) -> None:
    """Body of the rollout worker process (see the module docstring)."""
    reward_fn = None
    try:
        os.setpgid(0, 0)  # its own process group: the trainer can stop it with its verifier workers
        set_threads(threads)
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        from stalerl.data.prompts import PromptSampler, build_prompts, prompt_limits

        hf_logging.disable_progress_bar()
        # Sampling noise differs from the trainer's stream; seeded per (run seed, start batch).
        torch.manual_seed(config.seed * 1_000_003 + 7_919 * (start_batch + 1))
        mc = config.model
        kwargs: dict[str, Any] = {"dtype": DTYPES[mc.dtype]}  # the compute dtype: it only generates
        if mc.attn_implementation:
            kwargs["attn_implementation"] = mc.attn_implementation
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        model = AutoModelForCausalLM.from_pretrained(model_path, **kwargs).to(resolve_device(mc.device))
        model.eval()
        train_prompts, _ = build_prompts(
            config.data.train, split=config.data.train_split if config.data.train != "testbed" else "train",
            size=config.data.testbed_train_size if config.data.train == "testbed" else config.data.limit,
            tokenizer=tokenizer, data_config=config.data, seed=config.seed,
            **prompt_limits(model, config.rollout.max_new_tokens),  # the trainer's prompt list, exactly
        )
        sampler = PromptSampler(train_prompts, seed=config.seed)
        sampler.load_state_dict(sampler_state)
        reward_fn = build_reward_fn(config.reward)
        s, m = config.stale.staleness, config.optim.mini_batches
        version = -1  # no snapshot loaded yet

        def load(item) -> None:
            nonlocal version
            v, packed = pickle.loads(item)
            model.load_state_dict(unpack_state_dict(packed))
            version = v

        def newest(block: bool):
            """The newest pending snapshot (older ones dropped), or None."""
            item = None
            try:
                item = snapshots.get(timeout=_POLL_S) if block else snapshots.get_nowait()
                while True:
                    item = snapshots.get_nowait()
            except queue_mod.Empty:
                pass
            return item

        k = start_batch
        while k < end_batch and not stop.is_set():
            item = newest(block=False)
            if item is not None:
                load(item)
            need = min_policy_version(k, s, m)
            while version < need or version < 0:  # the staleness bound: wait for the trainer
                if stop.is_set() or not _parent_alive():
                    return
                item = newest(block=True)
                if item is not None:
                    load(item)
            batch = make_rollout_batch(config, model, tokenizer, sampler, reward_fn, version, record_rollout)
            batch.info["rollout/batch_index"] = float(k)
            # pickled here, not in the queue's feeder thread, so that a failure (too few file
            # descriptors to share the tensors, say) is this process's error, sent to the trainer
            message = bytes(ForkingPickler.dumps(("batch", k, batch.state_dict(), sampler.state_dict())))
            while True:
                try:
                    results.put(message, timeout=_POLL_S)
                    break
                except queue_mod.Full:
                    if stop.is_set() or not _parent_alive():
                        return
            k += 1
        while not stop.is_set() and _parent_alive():  # keep shared tensors alive until told to stop
            stop.wait(_POLL_S)
    except BaseException as exc:  # noqa: BLE001 - everything goes back to the trainer
        try:
            results.put(_error_message(exc), timeout=5)
        except Exception:
            pass
        stop.wait(10)  # let the trainer read the message before the queue goes away
    finally:
        if reward_fn is not None and hasattr(reward_fn, "close"):
            try:
                reward_fn.close()
            except Exception:
                pass


class AsyncRolloutWorker:
    """Handle on the rollout worker process (low level; the loop uses :class:`AsyncRollouts`)::

        w = AsyncRolloutWorker(config, model_path, start_batch=0, end_batch=steps, sampler_state=st)
        w.start(); w.send_snapshot(model, version=0)
        k, batch, sampler_state = w.get()        # blocks; raises AsyncWorkerError if the worker failed
        w.close()
    """

    def __init__(self, config, model_path: str, *, start_batch: int, end_batch: int, sampler_state: dict,
                 record_rollout: bool = False, threads: int | None = None) -> None:
        ctx = tmp.get_context("spawn")
        depth = config.stale.staleness // config.optim.mini_batches
        self._snapshots = ctx.Queue()
        self._results = ctx.Queue(maxsize=depth + 2)
        self._stop = ctx.Event()
        self.process = ctx.Process(
            target=_worker_main, name="stalerl-rollout-worker", daemon=True,
            args=(config, str(model_path), int(start_batch), int(end_batch), dict(sampler_state),
                  bool(record_rollout), int(threads or split_threads()[1]),
                  self._snapshots, self._results, self._stop),
        )
        self._closed = False
        # the worker's copy computes in model.dtype: send that, not the float32 masters
        self._send_dtype = DTYPES[config.model.dtype] if config.model.dtype != "float32" else None
        self._inbox: queue_mod.Queue = queue_mod.Queue()

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def start(self) -> "AsyncRolloutWorker":
        _quiet_resource_sharer()
        self.process.start()
        threading.Thread(target=self._pump, name="stalerl-rollout-reader", daemon=True).start()
        return self

    def send_snapshot(self, model, version: int) -> None:
        """Send the model's current weights as policy version ``version`` (non-blocking; pickled
        here so that a failure to share them is raised in the trainer, not lost in a feeder thread)."""
        self._snapshots.put(bytes(ForkingPickler.dumps((int(version), pack_state_dict(model, self._send_dtype)))))

    def _check(self, item):
        kind, k, payload, extra = pickle.loads(item) if isinstance(item, bytes) else item
        if kind == "error":
            line, trace, exc = payload
            log.debug("the rollout worker failed:\n%s", trace)
            if isinstance(exc, ValueError):  # a user error (a reward that raises...): as in sync mode
                raise AsyncWorkerUserError(" ".join(str(exc).split()))
            raise AsyncWorkerError(f"the rollout worker failed: {line}")
        return k, RolloutBatch.from_state(payload), extra

    def _pump(self) -> None:
        """Reader thread: moves messages from the worker's queue to ``_inbox``. A worker killed in
        the middle of a message leaves this thread blocked in the pipe, never the trainer."""
        while not self._closed:
            try:
                item = self._results.get(timeout=_POLL_S)
            except queue_mod.Empty:
                continue
            except (EOFError, OSError, ValueError):
                return
            self._inbox.put(item)

    def poll(self):
        """A finished batch ``(index, batch, sampler_state)`` if one is waiting, else None."""
        try:
            item = self._inbox.get_nowait()
        except queue_mod.Empty:
            return None
        return self._check(item)

    def get(self, timeout: float | None = None):
        """The next finished batch ``(index, batch, sampler_state)``; waits, but notices a dead
        worker within a second (:class:`AsyncWorkerError` with its exit code)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                return self._check(self._inbox.get(timeout=_POLL_S))
            except queue_mod.Empty:
                pass
            if not self.process.is_alive():
                try:  # a last message may have arrived just before it exited
                    return self._check(self._inbox.get(timeout=1.0))
                except queue_mod.Empty:
                    raise AsyncWorkerError(f"the rollout worker died ({_exit_reason(self.process.exitcode)}) "
                                           "before sending its next batch") from None
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"no rollout batch within {timeout} s")

    def close(self, timeout: float = 10.0) -> None:
        """Stop the worker and wait for it; terminate, then kill it if it does not exit."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self.process.pid is not None:
            deadline = time.monotonic() + timeout
            while self.process.is_alive() and time.monotonic() < deadline:
                self._drain()  # a worker blocked on a full queue must be able to see `stop`
                self.process.join(_POLL_S)
            if self.process.is_alive():
                self.process.terminate()
                self.process.join(2.0)
            if self.process.is_alive():
                self.process.kill()
                self.process.join(2.0)
            with contextlib.suppress(OSError):  # its verifier workers, in its process group
                os.killpg(self.process.pid, signal.SIGKILL)
        for q in (self._snapshots, self._results):
            q.cancel_join_thread()
            q.close()

    def _drain(self) -> None:
        try:
            while True:
                self._inbox.get_nowait()
        except queue_mod.Empty:
            pass

    def __enter__(self) -> "AsyncRolloutWorker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ============================================================================ trainer side

class AsyncRollouts:
    """What the loop calls in async mode: start the worker, hand out batches, publish snapshots.

    Received batches wait in ``buffer`` (the run's :class:`StaleBuffer`, so they are checkpointed
    like the sync buffer's queue); ``buffer.depth`` is not used as a gate here, the worker's
    version bound is.
    """

    def __init__(self, config, model_path: str, model, buffer: StaleBuffer, sampler, state,
                 record_rollout: bool) -> None:
        self.config = config
        self.buffer = buffer
        self.staleness = config.stale.staleness
        self.mini_batches = config.optim.mini_batches
        # the trainer's own threads were set by the loop (process 0 of 2); the worker is process 1
        worker_threads = choose_threads(processes=2, index=1, threads=config.runtime.threads,
                                        cores=config.runtime.cores)
        self.sampler_state = sampler.state_dict()  # state after the last *received* batch
        self.received = state.generated_batches      # == index of the next batch to receive
        self.next_index = state.step                  # index of the next batch to consume
        self._received_info: list[dict[str, float]] = []
        self.worker = AsyncRolloutWorker(
            config, model_path, start_batch=self.received, end_batch=config.steps,
            sampler_state=self.sampler_state, record_rollout=record_rollout, threads=worker_threads,
        ).start()
        self.worker.send_snapshot(model, state.updates)

    @property
    def pid(self) -> int | None:
        return self.worker.pid

    def _receive(self, item, state) -> None:
        k, batch, sampler_state = item
        if k != self.received:
            raise AsyncWorkerError(f"expected rollout batch {self.received}, the worker sent batch {k}")
        self.buffer.push(batch)
        self.received += 1
        self.sampler_state = sampler_state
        state.generated_batches = self.received
        self._received_info.append(batch.info)

    def _collect(self, state) -> None:
        while (item := self.worker.poll()) is not None:
            self._receive(item, state)

    def next_batch(self, state) -> tuple[RolloutBatch, list[dict[str, float]], float]:
        """The batch of step ``state.step`` (its first update is ``state.updates``); also the
        rollout infos of the batches received since the last call and the seconds spent waiting."""
        t0 = time.perf_counter()
        self._collect(state)
        while not len(self.buffer):
            self._receive(self.worker.get(), state)
        waited = time.perf_counter() - t0
        batch = self.buffer.queue.popleft()
        index = batch.info.get("rollout/batch_index")
        if index is not None and int(index) != self.next_index:
            raise AsyncWorkerError(f"step {state.step} expected batch {self.next_index}, got batch {int(index)}")
        self.next_index += 1
        lag = state.updates - batch.policy_version
        if not 0 <= lag <= self.staleness:
            raise StalenessBoundError(
                f"batch {self.next_index - 1} was generated by policy version {batch.policy_version}, "
                f"consumed from update {state.updates}: staleness {lag} outside [0, {self.staleness}]"
            )
        infos, self._received_info = self._received_info, []
        return batch, infos, waited

    def publish(self, model, state) -> None:
        """Send the weights after ``state.updates`` updates (unless the run is over)."""
        if state.step < self.config.steps:
            self.worker.send_snapshot(model, state.updates)

    def before_checkpoint(self, sampler, state) -> None:
        """Collect finished batches into the buffer and give ``sampler`` the worker's state after
        the last received batch, so ``buffer`` and ``sampler`` checkpoint what was received."""
        self._collect(state)
        sampler.load_state_dict(self.sampler_state)

    def close(self) -> None:
        self.worker.close()
