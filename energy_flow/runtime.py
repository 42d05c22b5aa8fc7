"""Process-level settings that entry points apply before torch is imported."""

from __future__ import annotations

import os

ONEDNN_CACHE_VARIABLE = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"


def disable_onednn_primitive_cache() -> None:
    """Turn oneDNN's CPU primitive cache off unless the user set its size.

    oneDNN keeps one compiled primitive per new tensor shape. The live flow
    count changes at every lattice step, so the shapes rarely repeat: with the
    default cache (1,024 entries) a 1,000-step debug run on CPU grew its
    allocator memory by 27 MB and its RSS from 0.9 GB to 6.7 GB while never
    getting faster; with the cache off memory stays flat and steps are no
    slower. No effect on CUDA kernels. Must run before torch initializes oneDNN.
    """
    os.environ.setdefault(ONEDNN_CACHE_VARIABLE, "0")


def resolve_device(name, cuda_count: int | None = None):
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` (or a ``torch.device``) -> ``torch.device``.

    ``auto`` picks CUDA when available. Raises ``ConfigError`` naming the
    problem for an unknown device, a CUDA request without CUDA, or ``cuda:N``
    with N at or above the device count. ``cuda_count`` stands for
    ``torch.cuda.device_count()`` (None: ask torch; 0: no CUDA).
    """
    import torch

    from energy_flow.config import ConfigError

    if cuda_count is None:
        cuda_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if name == "auto":
        return torch.device("cuda" if cuda_count > 0 else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {name!r}; use auto, cpu or cuda[:N]") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"unsupported device {str(name)!r}; use auto, cpu or cuda[:N]")
    if device.type == "cuda" and cuda_count == 0:
        raise ConfigError(f"device {str(name)!r} requested but CUDA is not available")
    if device.type == "cuda" and device.index is not None and device.index >= cuda_count:
        visible = "cuda:0" if cuda_count == 1 else f"cuda:0 to cuda:{cuda_count - 1}"
        raise ConfigError(f"device {str(name)!r} does not exist: {cuda_count} CUDA device"
                          f"{'' if cuda_count == 1 else 's'} visible ({visible})")
    return device


def atomic_write(path, write, sync: bool = True) -> None:
    """Create ``path`` through ``write(binary_file)`` on a temporary file in the same folder,
    fsync and rename: readers see the old file or the whole new one, never a part.
    ``sync=False`` leaves the fsync to the caller (the rename is still atomic for readers
    and survives the process being killed; only a machine crash needs the fsync).

    The temporary file is created with mode 0666 minus the umask (as ``open`` would), not
    ``mkstemp``'s 0600: a run or a checkpoint is readable by whoever the user's umask allows.
    """
    import contextlib
    import secrets
    from pathlib import Path

    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            if sync:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
