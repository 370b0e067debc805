"""torch.distributed helpers for mini-batch statistics that span data-parallel ranks.

Nothing here does anything unless ``torch.distributed`` is available and initialised.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True when a default process group is initialised with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of ranks (1 without torch.distributed)."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """This process's rank (0 without torch.distributed)."""
    return dist.get_rank() if is_distributed() else 0


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks (returns a new tensor)."""
    out = tensor.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def all_gather_varlen(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate 1-D tensors of different lengths from every rank, in rank order."""
    tensor = tensor.reshape(-1)
    n = torch.tensor([tensor.numel()], device=tensor.device, dtype=torch.long)
    sizes = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, n)
    sizes = [int(s.item()) for s in sizes]
    longest = max(sizes)
    padded = torch.zeros(longest, dtype=tensor.dtype, device=tensor.device)
    padded[: tensor.numel()] = tensor
    chunks = [torch.zeros_like(padded) for _ in sizes]
    dist.all_gather(chunks, padded)
    return torch.cat([c[:s] for c, s in zip(chunks, sizes, strict=True)])


def rank_offsets(count: int, device=None) -> tuple[int, int]:
    """``(offset of this rank's items in the rank-ordered concatenation, total)``."""
    if not is_distributed():
        return 0, count
    gathered = all_gather_varlen(torch.tensor([count], dtype=torch.long, device=device))
    sizes = gathered.tolist()
    return sum(sizes[: rank()]), sum(sizes)
