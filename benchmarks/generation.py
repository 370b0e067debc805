"""Benchmark: generation tokens/s of the continuous engine against the static ``model.generate`` path.

Both engines of :func:`stalerl.rollout.generation.generate` (``rollout.engine=continuous`` and
``static``) generate the same rows in the same process, interleaved (``static, continuous`` then
``continuous, static``, ...) after one untimed warm-up call each; figures are medians over
``--repeats``. Tokens/s = response tokens (EOS included) / wall time of the call.

Response lengths are *forced*, identically for both engines, by a logits processor that emits EOS
at a per-prompt target length (and forbids it before), so both engines generate exactly the same
number of tokens and only the scheduling differs:

* ``heavy``: a heavy-tailed distribution, ``t = min(cap, floor(4 / u))`` for ``u ~ U(0, 1]``
  (a discrete Pareto with tail index 1): median 8 tokens, about ``4 / cap`` of the rows at the cap,
  the shape of RL math rollouts where most answers are short and a few ramble to the limit;
* ``uniform``: every response exactly ``cap`` tokens (static batching's best case).

The prompts are ``--prompts`` distinct strings of one token length (``group_size`` 1), so each row
has its own target. The default model is the ``small`` testbed (its weights do not matter here:
the lengths are forced), ``--model PATH`` takes any causal-LM checkpoint.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/generation.py                 # small testbed, CPU, ~5 min
    python benchmarks/generation.py --repeats 1 --prompts 32 --max-new-tokens 32   # quick check
    python benchmarks/generation.py --model Qwen/Qwen3-0.6B --device cuda --dtype bfloat16 \\
        --prompts 512 --batch-size 128 --max-new-tokens 4096
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stalerl.rollout.generation import generate

ENGINES = ("static", "continuous")


class ForcedLengths:
    """A logits processor that makes the response of each prompt exactly ``target`` tokens long (EOS
    included; never longer than ``max_new_tokens``): EOS is forbidden before, forced at the end."""

    def __init__(self, prompt_ids: list[list[int]], targets: list[int], eos_id: int, pad_id: int):
        self.width = len(prompt_ids[0])
        if any(len(p) != self.width for p in prompt_ids):
            raise SystemExit("the benchmark prompts must all have the same token length with this tokenizer")
        if any(p[0] == pad_id for p in prompt_ids):
            raise SystemExit("a benchmark prompt starts with the pad token")
        gen = torch.Generator().manual_seed(1234)
        self.weights = torch.randint(1, 2**20, (self.width,), generator=gen)
        keys = torch.tensor(prompt_ids) @ self.weights
        if keys.unique().numel() != len(keys):
            raise SystemExit("two benchmark prompts hash alike; change --prompts")
        self.keys, order = keys.sort()
        self.targets = torch.tensor(targets)[order]
        self.eos_id, self.pad_id = eos_id, pad_id

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        first = (input_ids != self.pad_id).long().argmax(-1)              # prompts are left-padded
        cols = first.unsqueeze(1) + torch.arange(self.width, device=input_ids.device)
        keys = input_ids.gather(1, cols.clamp(max=input_ids.shape[1] - 1)) @ self.weights.to(input_ids.device)
        target = self.targets.to(input_ids.device)[torch.searchsorted(self.keys.to(keys.device), keys)]
        done = input_ids.shape[1] - first - self.width                    # response tokens so far
        scores = scores.clone()
        scores[done < target - 1, self.eos_id] = float("-inf")
        force = done >= target - 1
        scores[force] = float("-inf")
        scores[force, self.eos_id] = 0.0
        return scores


def target_lengths(kind: str, n: int, cap: int, seed: int) -> list[int]:
    """Per-prompt response lengths: ``heavy`` (``min(cap, floor(4 / u))``) or ``uniform`` (``cap``)."""
    if kind == "uniform":
        return [cap] * n
    u = 1.0 - torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)  # (0, 1]
    return [int(min(cap, max(1, (4.0 / x) // 1))) for x in u.tolist()]


def load(args):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if args.model:
        path = args.model
    else:
        from stalerl.testbed.warmstart import warm_start

        path = warm_start(size=args.size, steps=0, progress=False)
    dtype = getattr(torch, args.dtype)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(args.device)
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model.eval(), tokenizer, str(path)


def run(args) -> dict[str, dict[str, float]]:
    torch.set_num_threads(args.threads)
    model, tokenizer, path = load(args)
    eos_id = tokenizer.eos_token_id
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
    prompts = [f"Item {i:04d}: " for i in range(args.prompts)]
    prompt_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    params = sum(p.numel() for p in model.parameters())
    print(f"model {path} ({params / 1e6:.2f} M parameters, {args.dtype}, {args.device}); "
          f"{args.prompts} prompts x 1 response, max_new_tokens {args.max_new_tokens}, "
          f"batch_size {args.batch_size}, max_batch_tokens {args.max_batch_tokens}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads "
          f"{torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}, torch {torch.__version__}, "
          f"python {platform.python_version()}")
    results = {}
    for kind in args.distribution:
        targets = target_lengths(kind, args.prompts, args.max_new_tokens, args.seed)
        processor = ForcedLengths(prompt_ids, targets, eos_id, pad_id)
        times: dict[str, list[float]] = {e: [] for e in ENGINES}
        tokens = {}
        for repeat in range(args.repeats + 1):
            order = ENGINES if repeat % 2 == 0 else ENGINES[::-1]
            for engine in order:
                torch.manual_seed(args.seed + repeat)
                t0 = time.perf_counter()
                gen = generate(
                    model, tokenizer, prompts, temperature=1.0, max_new_tokens=args.max_new_tokens,
                    batch_size=args.batch_size, max_batch_tokens=args.max_batch_tokens, engine=engine,
                    logits_processor=processor, record_log_prob=args.record_log_prob,
                )
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                elapsed = time.perf_counter() - t0
                lengths = gen.response_mask.sum(-1)
                expected = torch.tensor(targets).clamp(max=args.max_new_tokens)
                assert torch.equal(lengths, expected), f"{engine}: the forced lengths were not honoured"
                tokens[engine] = int(lengths.sum())
                if repeat > 0:                                  # repeat 0 warms both engines up
                    times[engine].append(elapsed)
        median = {e: statistics.median(times[e]) for e in ENGINES}
        rate = {e: tokens[e] / median[e] for e in ENGINES}
        results[kind] = {"static_tokens_per_s": rate["static"], "continuous_tokens_per_s": rate["continuous"],
                         "ratio": rate["continuous"] / rate["static"], "tokens": tokens["static"]}
        lengths = torch.tensor(targets).clamp(max=args.max_new_tokens).float()
        print(f"{kind:8s} lengths: mean {lengths.mean():.1f}, median {lengths.median():.0f}, "
              f"at the cap {float((lengths == args.max_new_tokens).float().mean()):.1%}; {tokens['static']} tokens")
        for e in ENGINES:
            spread = ", ".join(f"{t:.2f}" for t in times[e])
            print(f"  {e:10s} {rate[e]:9.1f} tokens/s   (median of {len(times[e])}: {median[e]:.2f} s; runs {spread})")
        print(f"  continuous / static: {results[kind]['ratio']:.2f}x")
    return results


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="a causal-LM checkpoint (default: the testbed)")
    p.add_argument("--size", default="small", choices=["tiny", "small"], help="testbed size (default small)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--prompts", type=int, default=256, help="rows generated per call (default 256)")
    p.add_argument("--max-new-tokens", type=int, default=128, help="the cap (default 128)")
    p.add_argument("--batch-size", type=int, default=64, help="rows at once (default 64)")
    p.add_argument("--max-batch-tokens", type=int, default=None, help="token budget (default: none)")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per engine and distribution (default 3)")
    p.add_argument("--distribution", nargs="+", default=["heavy", "uniform"], choices=["heavy", "uniform"])
    p.add_argument("--record-log-prob", action="store_true", help="also record the sampler's log-probs")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None) -> dict[str, dict[str, float]]:
    return run(parse_args(argv))


if __name__ == "__main__":
    main()
