"""Async mode (``stale.mode=async``): generation in its own process, overlapped with training.

SPEC §3: "An async mode runs generation in its own process and training in another, with a bound
on staleness, so that generation and training overlap." This module is that machinery; the loop
(:func:`stalerl.training.loop.train`) only calls :class:`AsyncRollouts`.

Processes and messages
----------------------
* The **trainer** (the process running ``train``) owns the optimizer and the training model.
* The **rollout worker** (:class:`AsyncRolloutWorker`, a ``torch.multiprocessing`` *spawn*
  process) owns its own copy of the model, the prompt sampler and the reward function. It builds
  :class:`~stalerl.staleness.buffer.RolloutBatch` es exactly as the sync loop does
  (:func:`stalerl.training.loop.make_rollout_batch`: generation, reward, group advantages and the
  behaviour log-probs, computed by the worker's copy, which holds the training model's weights at
  the batch's ``policy_version``), and sends them through a bounded queue.
* After every step (``m`` optimizer updates) the trainer sends a **policy snapshot**: the
  ``state_dict`` tensors packed into one flat CPU tensor per dtype (shared memory) with the
  version number = the number of optimizer updates behind those weights. Before starting a batch
  the worker loads the newest snapshot it has received (older unread ones are dropped).

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
error (its traceback is re-raised in the trainer as :class:`AsyncWorkerError`). ``close`` joins it
and terminates/kills it if it does not exit in time, so no process is left behind.
"""

from __future__ import annotations

import math
import queue as queue_mod
import time
import traceback
from typing import Any

import torch
import torch.multiprocessing as tmp

from stalerl.runtime import available_cores, choose_threads, set_threads, split_cores
from stalerl.staleness.buffer import RolloutBatch, StaleBuffer

__all__ = [
    "AsyncRollouts",
    "AsyncRolloutWorker",
    "AsyncWorkerError",
    "StalenessBoundError",
    "min_policy_version",
    "pack_state_dict",
    "unpack_state_dict",
    "split_threads",
]

_POLL_S = 0.1


class AsyncWorkerError(RuntimeError):
    """The rollout worker failed (its traceback is in the message) or died."""


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

def pack_state_dict(model) -> dict[str, Any]:
    """The model's weights as one flat CPU tensor per dtype (few shared-memory segments) + layout."""
    groups: dict[torch.dtype, list[torch.Tensor]] = {}
    layout = []
    offsets: dict[torch.dtype, int] = {}
    for name, t in model.state_dict().items():
        t = t.detach()
        off = offsets.get(t.dtype, 0)
        layout.append((name, t.dtype, off, tuple(t.shape)))
        offsets[t.dtype] = off + t.numel()
        groups.setdefault(t.dtype, []).append(t.reshape(-1))
    flats = {str(dt): torch.cat(ts).to("cpu", copy=True) for dt, ts in groups.items()}
    return {"flats": flats, "layout": [(n, str(dt), off, shape) for n, dt, off, shape in layout]}


def unpack_state_dict(packed: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`pack_state_dict` (views into the flat tensors)."""
    flats = packed["flats"]
    out = {}
    for name, dt, off, shape in packed["layout"]:
        n = math.prod(shape)
        out[name] = flats[dt][off:off + n].view(shape)
    return out


# ============================================================================ worker process

def _parent_alive() -> bool:
    parent = tmp.parent_process()
    return parent is None or parent.is_alive()


def _worker_main(config, model_path: str, start_batch: int, end_batch: int, sampler_state: dict,
                 record_rollout: bool, threads: int, snapshots, results, stop) -> None:
    """Body of the rollout worker process (see the module docstring)."""
    reward_fn = None
    try:
        set_threads(threads)
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        from stalerl.data.prompts import PromptSampler, build_prompts
        from stalerl.training.loop import _make_reward, make_rollout_batch, resolve_device

        hf_logging.disable_progress_bar()
        # Sampling noise differs from the trainer's stream; seeded per (run seed, start batch).
        torch.manual_seed(config.seed * 1_000_003 + 7_919 * (start_batch + 1))
        mc = config.model
        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[mc.dtype]
        kwargs: dict[str, Any] = {"dtype": dtype}
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
        )
        sampler = PromptSampler(train_prompts, seed=config.seed)
        sampler.load_state_dict(sampler_state)
        reward_fn = _make_reward(config)
        s, m = config.stale.staleness, config.optim.mini_batches
        version = -1  # no snapshot loaded yet

        def load(item) -> None:
            nonlocal version
            v, packed = item
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
            message = ("batch", k, batch.state_dict(), sampler.state_dict())
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
    except BaseException:  # noqa: BLE001 - everything goes back to the trainer
        try:
            results.put(("error", -1, traceback.format_exc(), None), timeout=5)
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

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def start(self) -> "AsyncRolloutWorker":
        self.process.start()
        return self

    def send_snapshot(self, model, version: int) -> None:
        """Send the model's current weights as policy version ``version`` (non-blocking)."""
        self._snapshots.put((int(version), pack_state_dict(model)))

    def _check(self, item):
        kind, k, payload, extra = item
        if kind == "error":
            raise AsyncWorkerError(f"the rollout worker failed:\n{payload}")
        return k, RolloutBatch.from_state(payload), extra

    def poll(self):
        """A finished batch ``(index, batch, sampler_state)`` if one is waiting, else None."""
        try:
            item = self._results.get_nowait()
        except queue_mod.Empty:
            return None
        return self._check(item)

    def get(self, timeout: float | None = None):
        """The next finished batch ``(index, batch, sampler_state)``; blocks."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                return self._check(self._results.get(timeout=_POLL_S))
            except queue_mod.Empty:
                pass
            if not self.process.is_alive():
                try:  # a last message may have arrived just before it exited
                    return self._check(self._results.get(timeout=1.0))
                except queue_mod.Empty:
                    raise AsyncWorkerError(
                        f"the rollout worker exited (exit code {self.process.exitcode}) without a batch"
                    ) from None
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
        self._drain()
        for q in (self._snapshots, self._results):
            q.cancel_join_thread()
            q.close()

    def _drain(self) -> None:
        try:
            while True:
                self._results.get_nowait()
        except (queue_mod.Empty, OSError, ValueError):
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
