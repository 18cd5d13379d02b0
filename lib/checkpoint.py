"""Atomic, verifiable checkpoints: write-then-rename, retention, safe loading, fallback on corruption.

A training checkpoint is a plain dict of tensors and primitives (state dicts, step, RNG states, the
run's config as a dict), so it loads with ``torch.load(weights_only=True)``: nothing in a file can
execute code.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
import warnings
from pathlib import Path

import torch

CKPT_RE = re.compile(r"^ckpt-(\d{8})\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read: the message names the file."""


def atomic_write_bytes(path, write_fn) -> Path:
    """Write a file via ``write_fn(fileobj)`` into a temp file beside ``path``, fsync, then rename.

    A crash at any moment leaves either the old file or the complete new one, never a torn file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_save(obj, path) -> Path:
    """``torch.save`` made atomic."""
    return atomic_write_bytes(path, lambda f: torch.save(obj, f))


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


def load_latest(run_dir, map_location="cpu"):
    """The newest readable checkpoint as ``(path, state)``, or ``(None, None)`` when there is none.

    A corrupt newest file is reported (warning naming it) and the previous one is tried."""
    for path in reversed(list_checkpoints(run_dir)):
        try:
            return path, safe_load(path, map_location)
        except CheckpointError as e:
            warnings.warn(f"{e} -- falling back to the previous checkpoint", stacklevel=2)
    return None, None


def load_run(run_dir, map_location="cpu"):
    """A finished run's ``(config, ema_state_dict)`` from ``config.json`` and ``final.pt``."""
    from lib.config import load_json

    run_dir = Path(run_dir)
    final, cfg_file = run_dir / "final.pt", run_dir / "config.json"
    if not final.exists() or not cfg_file.exists():
        raise FileNotFoundError(f"{run_dir} holds no finished run (need config.json and final.pt); "
                                f"train it first (python -m lib.train ... --out {run_dir}, or notebook 03_train)")
    return load_json(cfg_file), safe_load(final, map_location)


def read_json(path) -> dict:
    with open(path) as f:
        return json.load(f)
