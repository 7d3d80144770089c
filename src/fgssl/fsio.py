"""Writing files so that a full disk costs one clear line and nothing already written.

Every file fgssl owns (``last.ckpt``, ``metrics*.json``, figures) is written to a temporary file
beside its target and renamed over it (an atomic replace on POSIX file systems). When the write
fails because the disk (or the user's quota) is full, the temporary file is removed, the previous
file is left as it was, and the failure is one :class:`FgsslError` naming the path, the size
needed and the space left (:func:`disk_full_error`).
"""

from __future__ import annotations

import errno
import io
import os
import shutil
from pathlib import Path
from typing import Optional, Union

from fgssl.errors import FgsslError

#: errno values that mean "no space left" (a full disk, or a full quota).
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in DISK_FULL


def human(n: Optional[float]) -> str:
    if n is None:
        return "unknown"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000.0
    return f"{n:.1f} TB"


def free_space(path: Union[str, Path]) -> Optional[int]:
    """Bytes free to this user on the file system holding ``path`` (its first existing parent)."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def remove_quietly(path: Union[str, Path]) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


class DiskFullError(FgsslError):
    """A write that found the disk (or quota) full; ``path`` and ``needed`` (bytes) say which and how much."""

    def __init__(self, message: str = "", path: Optional[Path] = None, needed: Optional[int] = None):
        super().__init__(message)
        self.path, self.needed = path, needed


def disk_full_error(path: Union[str, Path], needed: Optional[int], kept: Optional[str] = None) -> DiskFullError:
    """The one-line error for a write of ``needed`` bytes to ``path`` that found the disk full."""
    msg = (f"disk full while writing {path}: it needs {human(needed)}, {human(free_space(path))} left on "
           f"that file system")
    if kept:
        msg += f"; {kept}"
    msg += ". Free some space (or point hydra.run.dir / out_dir elsewhere) and rerun the same command"
    return DiskFullError(msg, Path(path), needed)


def atomic_write_bytes(path: Union[str, Path], data: bytes, kept: Optional[str] = None) -> Path:
    """Write ``data`` to ``path`` through a temporary file and a rename; a full disk is one
    :class:`FgsslError` (``kept`` says what is kept, e.g. the previous file) and the temporary file
    is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as e:
        remove_quietly(tmp)
        if is_disk_full(e):
            if kept is None and path.exists():
                kept = f"the previous {path.name} is kept"
            raise disk_full_error(path, len(data), kept) from None
        raise
    return path


def atomic_write_text(path: Union[str, Path], text: str, kept: Optional[str] = None) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), kept)


def save_figure(fig, path: Union[str, Path], **savefig_kw) -> Path:
    """``fig.savefig(path)`` rendered in memory first, then written with :func:`atomic_write_bytes`."""
    path = Path(path)
    buf = io.BytesIO()
    fmt = savefig_kw.pop("format", None) or (path.suffix.lstrip(".") or "png")
    fig.savefig(buf, format=fmt, **savefig_kw)
    return atomic_write_bytes(path, buf.getvalue())


class AtomicCheckpointIO:
    """Built by :func:`checkpoint_io` (Lightning is imported lazily)."""


def checkpoint_io():
    """Lightning's ``TorchCheckpointIO`` whose writes go through :func:`atomic_write_bytes`.

    Lightning's own ``_atomic_save`` writes through an fsspec transaction that stages the file in
    the system temp folder and then moves it: on a full disk it leaves a partial file beside the
    target (and may leave the staged copy in /tmp) and raises a bare ``OSError``. Lightning's
    documented way to change how checkpoints are written is a ``CheckpointIO`` plugin; this one
    serializes in memory as Lightning does and writes the bytes atomically.
    """
    import torch
    from lightning_fabric.utilities.cloud_io import get_filesystem
    from lightning_fabric.utilities.types import _PATH
    from pytorch_lightning.plugins.io import TorchCheckpointIO

    class _AtomicCheckpointIO(TorchCheckpointIO, AtomicCheckpointIO):
        def save_checkpoint(self, checkpoint, path: _PATH, storage_options=None) -> None:
            if storage_options is not None:
                raise TypeError("storage_options are not supported by fgssl's checkpoint writer")
            if get_filesystem(path).protocol not in ("file", ("file", "local")):
                return super().save_checkpoint(checkpoint, path, storage_options)
            buf = io.BytesIO()
            torch.save(checkpoint, buf)
            atomic_write_bytes(path, buf.getvalue())

    return _AtomicCheckpointIO()


class _CountingSink(io.RawIOBase):
    """A write-only file that only counts the bytes written to it (the size of a serialization)."""

    def __init__(self):
        self.n = 0

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        n = len(memoryview(b))
        self.n += n
        return n


def serialized_size(obj) -> Optional[int]:
    """Bytes ``torch.save(obj)`` writes, computed without keeping them in memory."""
    import torch

    sink = _CountingSink()
    try:
        torch.save(obj, sink)
    except Exception:  # noqa: BLE001 - only used for a message
        return None
    return sink.n
