"""The torch device a run computes on (``model.device``), checked to exist on this machine."""

from __future__ import annotations

import torch

from stalerl.errors import ConfigError

__all__ = ["resolve_device"]


def resolve_device(name: str) -> torch.device:
    """``model.device`` as a torch device that exists on this machine (else a :class:`ConfigError`)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"model.device={name!r} is not a device name; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            raise ConfigError(f"model.device={name!r} does not exist here: this machine has {count} CUDA device(s); "
                              "use auto or cpu")
    elif device.type != "cpu":
        try:
            torch.empty(0, device=device)
        except (RuntimeError, AssertionError) as err:
            raise ConfigError(f"model.device={name!r} is not usable here ({' '.join(str(err).split())[:120]})") from None
    return device
