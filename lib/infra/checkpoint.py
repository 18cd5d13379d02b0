"""Atomic, verifiable checkpoints: write-then-rename, retention, safe loading, fallback on corruption.

A training checkpoint is a plain dict of tensors and primitives (state dicts, step, RNG states, the
run's config as a dict), so it loads with ``torch.load(weights_only=True)``: nothing in a file can
execute code. Files get the permissions the user's umask gives (not mkstemp's 0600), and a full disk
is a :class:`DiskFull` error naming the disk, the free space and the space needed.
"""
from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch

CKPT_RE = re.compile(r"^ckpt-(\d{8})\.pt$")
TEMP_RE = re.compile(r"^\..+\.tmp$")  # what atomic_write_bytes leaves behind when killed mid-write


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read: the message names the file."""


class DiskFull(OSError):
    """No space left while writing a file: the message names the disk, the free and the needed space."""

    def __str__(self):
        return self.strerror


def _umask() -> int:
    mask = os.umask(0o022)  # the only way to read it; set straight back
    os.umask(mask)
    return mask


def _mb(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def _mount(path: Path) -> Path:
    path = path.resolve()
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


def atomic_write_bytes(path, write_fn, size_hint: int | None = None) -> Path:
    """Write a file via ``write_fn(fileobj)`` into a temp file beside ``path``, fsync, then rename.

    A crash at any moment leaves either the old file or the complete new one, never a torn file (a
    SIGKILL can leave the temp file ``.<name>.*.tmp``, which :func:`sweep_temp` removes). The file gets
    mode 0666 minus the umask, as ``open`` would give it. ``size_hint`` (bytes) goes into the
    :class:`DiskFull` message."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        written = os.path.getsize(tmp) if os.path.exists(tmp) else 0
        if os.path.exists(tmp):
            os.unlink(tmp)
        if is_disk_full(e):
            free = shutil.disk_usage(path.parent).free
            need = max(size_hint or 0, written)
            raise DiskFull(errno.ENOSPC, f"no space left on the disk {_mount(path.parent)} while writing {path}: "
                                         f"{_mb(free)} free, the file needs about {_mb(need)} more than that "
                                         f"(at least {_mb(need)} in all). Free space there and run the same "
                                         f"command again (training resumes from its last checkpoint).") from None
        raise
    return path


def is_disk_full(e: BaseException) -> bool:
    """A full disk, whatever exception carries it: an OSError with ENOSPC, or (torch.save, zip writers)
    a RuntimeError whose text or cause says "No space left on device" / errno 28."""
    while e is not None:
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return True
        text = str(e)
        if "No space left on device" in text or "errno 28" in text.lower() or "error code 28" in text.lower():
            return True
        e = e.__cause__ or e.__context__
    return False


def check_free_space(folder, need: int, what: str) -> None:
    """Refuse (DiskFull) before minutes of work whose result of ``need`` bytes cannot be stored in ``folder``."""
    free = shutil.disk_usage(folder).free
    if free < need:
        raise DiskFull(errno.ENOSPC, f"no space for {what} on the disk {_mount(Path(folder))}: it needs about "
                                     f"{_mb(need)}, {_mb(free)} are free. Free {_mb(need - free)} or more there, or "
                                     f"write it elsewhere, and run the same command again.")


def _tensor_bytes(obj) -> int:
    if torch.is_tensor(obj):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def atomic_save(obj, path) -> Path:
    """``torch.save`` made atomic."""
    return atomic_write_bytes(path, lambda f: torch.save(obj, f), size_hint=_tensor_bytes(obj))


def sweep_temp(run_dir) -> list[Path]:
    """Delete the temp files that writers killed mid-write left in ``run_dir`` (call only while no
    writer can be active there: lib.train holds the run directory's lock)."""
    run_dir = Path(run_dir)
    gone = [p for p in run_dir.iterdir() if TEMP_RE.match(p.name) and p.is_file()] if run_dir.is_dir() else []
    for p in gone:
        p.unlink(missing_ok=True)
    return gone


def sha256(path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()  # streamed (Python >= 3.11, as the Makefile requires)


def atomic_write_text(path, text: str) -> Path:
    return atomic_write_bytes(path, lambda f: f.write(text.encode()))


def safe_load(path, map_location="cpu"):
    """``torch.load(weights_only=True)``; a truncated or corrupt file raises CheckpointError naming it."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for torn zip archives
        if re.search(r"Unsupported (global|class)|GLOBAL |[Rr]educe", str(e)):  # a refused pickle: torch's advice
            # (weights_only=False) is never the fix; an HTML page or garbage is "unreadable", below
            raise CheckpointError(f"checkpoint {path} holds Python objects other than tensors and plain containers, "
                                  f"which are not unpickled (they could run code): it was not written by this "
                                  f"project. Delete it (an earlier checkpoint is used), or train again.") from None
        raise CheckpointError(f"checkpoint {path} is unreadable (truncated or corrupt: {type(e).__name__}: {e}). "
                              f"Delete it to fall back to an earlier checkpoint.") from e


def list_checkpoints(run_dir) -> list[Path]:
    """Training checkpoints of a run, oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    return sorted(p for p in run_dir.iterdir() if CKPT_RE.match(p.name))


def ckpt_path(run_dir, step: int) -> Path:
    return Path(run_dir) / f"ckpt-{step:08d}.pt"


def save_checkpoint(run_dir, step: int, state: dict, keep: int) -> Path:
    """Write ``ckpt-<step>.pt`` atomically and delete all but the newest ``keep``."""
    path = atomic_save(state, ckpt_path(run_dir, step))
    for old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return path
