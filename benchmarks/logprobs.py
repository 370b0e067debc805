"""Benchmark: chunked vs naive per-token log-probs (forward + backward from ``hidden``).

Compares, at a Qwen-sized head (V = 151,936, H = 1024 as in Qwen3-0.6B):

* ``naive``: ``logits = hidden @ W.T`` upcast to float32, ``/ temperature``,
  ``log_softmax``, gather; entropy from the same distribution (detached);
* ``chunked``: :func:`stalerl.models.logprobs.token_log_probs_from_hidden`
  (entropy computed, detached), for one or more chunk sizes.

The loss is ``(log_prob * random weights).sum()`` and the backward pass computes the
gradients w.r.t. ``hidden`` and ``W``. Every path runs in a fresh subprocess. Peak
memory is the process's peak RSS during the first forward+backward minus its RSS once
the inputs are allocated (CPU; on Linux the peak mark VmHWM is reset through
``/proc/self/clear_refs``, elsewhere ``ru_maxrss`` is used), or ``torch.cuda.max_memory_allocated`` minus the memory
allocated for the inputs (CUDA). It includes the ``(V, H)`` weight gradient, which both
paths must produce. Time is the median over ``--repeats`` runs (after ``--warmup`` untimed ones).

Usage::

    python benchmarks/logprobs.py                       # CPU, B=4 T=512, ~2-3 min on 2 cores
    python benchmarks/logprobs.py --device cuda --dtype bf16 --batch 8 --seq 2048
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def _parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", "-B", type=int, default=4)
    p.add_argument("--seq", "-T", type=int, default=512)
    p.add_argument("--vocab", "-V", type=int, default=151_936)
    p.add_argument("--hidden", "-H", type=int, default=1024)
    p.add_argument("--chunk", type=int, nargs="+", default=[256],
                   help="chunk size(s) of the chunked path, e.g. --chunk 256 1024 (default: 256)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per path (default: 3)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed runs before the timed ones (default: 1 on CUDA, 0 on CPU, "
                        "where the first timed run also measures memory)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    p.add_argument("--json", action="store_true", help="also print the results as JSON")
    p.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--_chunk", type=int, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _rss_peak_bytes() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024  # Linux reports KiB


def _proc_status_bytes(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_peak_rss() -> tuple[int, bool]:
    """Reset the kernel's peak-RSS mark if possible; return (baseline bytes, reset?).

    On Linux, writing 5 to /proc/self/clear_refs resets VmHWM, so transient peaks from
    building the inputs do not hide the measured path's peak. Elsewhere falls back to
    ``ru_maxrss`` (which can under-report if setup peaked higher).
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        rss = _proc_status_bytes("VmRSS")
        if rss is not None:
            return rss, True
    except OSError:
        pass
    return _rss_peak_bytes(), False


def _peak_rss(reset: bool) -> int:
    if reset:
        hwm = _proc_status_bytes("VmHWM")
        if hwm is not None:
            return hwm
    return _rss_peak_bytes()


def _worker(args) -> dict:
    """Run one path in this (fresh) process and return its measurements."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from stalerl.models.logprobs import token_log_probs_from_hidden

    dev = torch.device(args.device)
    dtype = getattr(torch, DTYPES[args.dtype])
    cuda = dev.type == "cuda"
    g = torch.Generator(device="cpu").manual_seed(0)
    B, T, V, H = args.batch, args.seq, args.vocab, args.hidden
    hidden = torch.randn(B, T, H, generator=g).to(dev, dtype).requires_grad_()
    weight = torch.randn(V, H, generator=g).mul_(H**-0.5).to(dev, dtype).requires_grad_()
    targets = torch.randint(0, V, (B, T), generator=g).to(dev)
    loss_w = torch.randn(B, T, generator=g).to(dev)
    temp = args.temperature
    path = args.path

    def step():
        hidden.grad = None
        weight.grad = None
        if path == "naive":
            logits = (hidden @ weight.t()).float() / temp
            logp_all = torch.log_softmax(logits, dim=-1)
            logp = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
            with torch.no_grad():
                ent = -(logp_all.exp() * logp_all).sum(-1)
            del logits, logp_all
        else:
            logp, ent = token_log_probs_from_hidden(
                hidden, weight, targets, temperature=temp, chunk_size=args.chunk_size,
                compute_entropy=True,
            )
            ent = ent.detach()
        loss = (logp * loss_w).sum()
        loss.backward()
        return float(loss.item()), float(ent.mean().item())

    def sync():
        if cuda:
            torch.cuda.synchronize()

    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
    else:
        base, reset = _reset_peak_rss()
    t0, c0 = time.perf_counter(), time.process_time()
    loss, ent = step()  # first run; measures peak memory
    sync()
    first, first_cpu = time.perf_counter() - t0, time.process_time() - c0
    if cuda:
        peak = torch.cuda.max_memory_allocated(dev) - base
    else:
        peak = _peak_rss(reset) - base
    warmup = args.warmup if args.warmup is not None else (1 if cuda else 0)
    times = [] if warmup >= 1 else [first]
    cpu_times = [] if warmup >= 1 else [first_cpu]
    for _ in range(max(warmup - 1, 0)):
        step()
    for _ in range(args.repeats - len(times)):
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        sync()
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    return {
        "path": path if path == "naive" else f"chunked({args.chunk_size})",
        "peak_bytes": int(peak),
        "time_s": statistics.median(times) if times else first,
        "first_s": first,
        "cpu_s": statistics.median(cpu_times) if cpu_times else first_cpu,
        "loss": loss,
        "entropy_mean": ent,
        "grad_w_norm": float(weight.grad.float().norm().item()),
    }


def _run_sub(argv, path, chunk=None) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), *argv, "--_worker", path]
    if chunk is not None:
        cmd += ["--_chunk", str(chunk)]
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        sys.stderr.write(out.stderr)
        raise SystemExit(f"worker {path} failed with exit code {out.returncode}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parse(argv)
    if args._worker is not None:  # child process: run one path, print JSON
        args.path, args.chunk_size = args._worker, args._chunk
        print(json.dumps(_worker(args)))
        return

    N = args.batch * args.seq
    print(
        f"B={args.batch} T={args.seq} (N={N} rows) V={args.vocab} H={args.hidden} "
        f"dtype={args.dtype} device={args.device} temperature={args.temperature} "
        f"repeats={args.repeats}"
    )
    print(f"naive float32 logits alone: {N * args.vocab * 4 / 2**30:.2f} GiB; "
          f"(V, H) weight grad: {args.vocab * args.hidden * 4 / 2**30:.2f} GiB in fp32")
    results = [_run_sub(argv, "naive")]
    for c in args.chunk:
        results.append(_run_sub(argv, "chunked", c))
    naive = results[0]
    print()
    print(f"{'path':<16}{'peak mem (GiB)':>16}{'time (s)':>12}{'cpu (s)':>10}{'mem ratio':>12}"
          f"{'time ratio':>12}{'cpu ratio':>11}{'grad_W norm':>14}")
    for r in results:
        print(
            f"{r['path']:<16}{r['peak_bytes'] / 2**30:>16.3f}{r['time_s']:>12.3f}{r['cpu_s']:>10.2f}"
            f"{r['peak_bytes'] / max(naive['peak_bytes'], 1):>12.3f}"
            f"{r['time_s'] / naive['time_s']:>12.3f}{r['cpu_s'] / max(naive['cpu_s'], 1e-9):>11.3f}"
            f"{r['grad_w_norm']:>14.6g}"
        )
    print("\nratios are chunked/naive: peak memory of forward+backward, median wall time, median "
          "process CPU time\n(CPU time is the steadier one on a shared machine)")
    if args.json:
        print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
