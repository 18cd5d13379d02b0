"""The rehearsal manifest: what a rehearsal of the GPU route (scripts/rehearse.py) put in place of the
files only a GPU box has, read by the runs that name it in ``experiment.rehearsal`` and by nothing else.

A rehearsal runs the ``gpu``/``paper`` notebooks through their own code paths on fixtures made on the
spot: CIFAR-10-format batches of synthetic images, a stand-in for the Inception network (random
convolutions, uint8 images in, 2048-d features out: :class:`lib.measure.fid.StandIn`, built in memory
from a seed, never written where clean-fid looks for its weights), reference statistics computed
with it, and random weights in the DDIM checkpoint layout under a published checkpoint's name. The
manifest lists them with their checksums:

    {"kind": "s2dm-rehearsal-manifest", "version": 1, "profile": "gpu",
     "standin": {"seed": 0, "dim": 2048},
     "stats": {"cifar10_legacy_tensorflow_train_32.npz": {"path": "...", "sha256": "..."}},
     "checkpoints": {"ema_cifar10": {"path": "...", "md5": "..."}},
     "notebook_08": {"steps": [2, 3], "n_samples": 24, "finetune_steps": 4},
     "overrides": ["train.steps=12", ...]}

Nothing looks for a manifest by itself: a normal run (``experiment.rehearsal`` empty) checks the
published MD5 of ``ema_cifar10`` and reads clean-fid's own files, whatever lies on the disk. The
manifest is JSON (no file can run code) and every error is one line naming the file.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from lib.infra.config_error import ConfigError

KIND, VERSION = "s2dm-rehearsal-manifest", 1
NAME = "REHEARSAL.json"


class ManifestError(ConfigError):
    """The manifest named by ``experiment.rehearsal`` is missing, unreadable or does not fit its fixtures."""


@dataclass(frozen=True)
class Manifest:
    path: Path
    profile: str
    standin_seed: int
    standin_dim: int
    stats: dict = field(default_factory=dict)  # clean-fid stats file name -> {"path", "sha256"}
    checkpoints: dict = field(default_factory=dict)  # checkpoint name -> {"path", "md5"}
    notebook_08: dict = field(default_factory=dict)
    overrides: tuple = ()

    def stats_path(self, name: str) -> Path:
        """The fixture standing in for clean-fid's statistics file ``name``, its checksum verified."""
        entry = self.stats.get(name)
        if entry is None:
            raise ManifestError(f"{self.path} lists no reference statistics {name!r} (it has {sorted(self.stats)}); "
                                f"run scripts/rehearse.py again to remake the fixtures")
        p = Path(entry["path"])
        if not p.is_file() or sha256(p) != entry["sha256"]:
            raise ManifestError(f"the rehearsal statistics {p} are missing or changed since {self.path} was written; "
                                f"run scripts/rehearse.py again to remake the fixtures")
        return p


def sha256(path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def load(path) -> Manifest:
    """The manifest at ``path``, validated; :class:`ManifestError` naming the file and the fix otherwise."""
    p = Path(path)
    fix = "make it with `python scripts/rehearse.py --profile gpu`, or leave experiment.rehearsal empty for a real run"
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(f"experiment.rehearsal names {p}, which does not exist; {fix}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ManifestError(f"{p} is not a readable rehearsal manifest ({type(e).__name__}); {fix}") from None
    if not isinstance(d, dict) or d.get("kind") != KIND or d.get("version") != VERSION:
        raise ManifestError(f"{p} is not a rehearsal manifest (kind {KIND!r}, version {VERSION}); {fix}")
    try:
        m = Manifest(path=p.resolve(), profile=str(d["profile"]), standin_seed=int(d["standin"]["seed"]),
                     standin_dim=int(d["standin"]["dim"]), stats=dict(d.get("stats", {})),
                     checkpoints=dict(d.get("checkpoints", {})), notebook_08=dict(d.get("notebook_08", {})),
                     overrides=tuple(d.get("overrides", ())))
        for name, e in {**m.stats, **m.checkpoints}.items():
            if not (isinstance(e, dict) and isinstance(e.get("path"), str)):
                raise TypeError(name)
    except (KeyError, TypeError, ValueError) as e:
        raise ManifestError(f"{p} is a rehearsal manifest with a missing or malformed entry ({e}); {fix}") from None
    return m


def of(cfg) -> Manifest | None:
    """The manifest a config names (``experiment.rehearsal``), or None for a real run."""
    where = getattr(cfg.experiment, "rehearsal", "")
    return load(where) if where else None


def write(path, *, profile: str, standin: dict, stats: dict, checkpoints: dict, notebook_08: dict,
          overrides) -> Path:
    """Write a manifest (scripts/rehearse.py); paths are stored absolute, so workers read the same files."""
    p = Path(path)
    d = {"kind": KIND, "version": VERSION, "profile": profile, "standin": standin, "stats": stats,
         "checkpoints": checkpoints, "notebook_08": notebook_08, "overrides": list(overrides)}
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(d, indent=2) + "\n", encoding="utf-8")
    tmp.replace(p)
    return p
