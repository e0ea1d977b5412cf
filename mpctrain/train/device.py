"""Device choice: the enclave trains on its (confidential) GPU when it has one, else on the CPU."""

from __future__ import annotations

import torch

__all__ = ["DeviceUnavailable", "pick_device"]


class DeviceUnavailable(RuntimeError):
    """The requested device is not present on this machine."""


def pick_device(prefer: str = "auto") -> torch.device:
    """Return the device to train on.

    ``"auto"`` picks CUDA when available, else CPU. ``"cpu"``, ``"cuda"`` and ``"cuda:N"`` are honoured
    exactly: asking for a GPU that is not there raises :class:`DeviceUnavailable` rather than silently
    training on the CPU.
    """
    if not isinstance(prefer, str):
        raise DeviceUnavailable(f"device must be a string such as 'auto', 'cpu' or 'cuda', got {prefer!r}")
    choice = prefer.strip().lower()
    if choice == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if choice == "cpu":
        return torch.device("cpu")
    if choice == "cuda" or choice.startswith("cuda:"):
        try:
            device = torch.device(choice)
        except RuntimeError:
            raise DeviceUnavailable(f"invalid CUDA device {prefer!r}; use 'cuda' or 'cuda:N'") from None
        if not torch.cuda.is_available():
            raise DeviceUnavailable(f"{prefer!r} requested but CUDA is not available; use 'auto' or 'cpu'")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceUnavailable(f"{prefer!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
        return device
    raise DeviceUnavailable(f"unknown device {prefer!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'")
