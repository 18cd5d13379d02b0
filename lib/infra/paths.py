"""Where a profile's outputs live: figures and tables under ``figures/<profile>/``, trained runs and
sample sets under ``data/runs/<profile>/``. Notebooks talk to each other only through these files.

While scripts/run_notebook.py runs a notebook it sets ``S2DM_STAGE_FOR`` (a figures folder) and
``S2DM_STAGE_DIR``: :attr:`Paths.figures` of that folder is then the staging folder, whose files the
script moves into place only when the whole notebook succeeded, so a failed notebook never replaces
good tables. :meth:`Paths.require` reads another notebook's published file through the staging folder.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # lib/infra/paths.py -> the repository
STAGE_FOR, STAGE_DIR = "S2DM_STAGE_FOR", "S2DM_STAGE_DIR"


@dataclass(frozen=True)
class Paths:
    """Output folders of one profile; ``root`` (default: the repository) lets tests run elsewhere."""

    profile: str
    root: Path | None = None

    def __post_init__(self):
        # The notebooks' papermill parameters arrive here: a wrong type is one line, not a TypeError deep inside.
        if not isinstance(self.profile, str) or not self.profile:
            raise ValueError(f"the notebook parameter profile={self.profile!r} must be a profile name (a string such "
                             f"as 'ci'); pass it as -p profile ci")
        if self.root is not None and not isinstance(self.root, (str, os.PathLike)):
            raise ValueError(f"the notebook parameter root={self.root!r} must be a folder path (a string), or empty "
                             f"for the repository; pass it as -p root /path/to/outputs")
        # A relative root is resolved once, here, from the caller's folder: worker processes run from
        # the repository (lib.infra.processes), so every path handed to them must be absolute.
        if self.root:
            object.__setattr__(self, "root", Path(self.root).resolve())

    @property
    def base(self) -> Path:
        return Path(self.root) if self.root else ROOT

    @property
    def published_figures(self) -> Path:
        return self.base / "figures" / self.profile

    @property
    def figures(self) -> Path:
        """Where a notebook writes its tables and figures (the staging folder while run_notebook runs it)."""
        p = self.published_figures
        if os.environ.get(STAGE_DIR) and os.environ.get(STAGE_FOR) == str(p.resolve()):
            p = Path(os.environ[STAGE_DIR])
        return self._made(p)

    @property
    def runs(self) -> Path:
        return self._made(self.base / "data" / "runs" / self.profile)

    def _made(self, p: Path) -> Path:
        """``p``, created; an output root that cannot take it (a file, read-only, no permission) is one line."""
        try:
            p.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ValueError(f"the output root {self.base} cannot be written ({e.strerror or e}: {e.filename or p}); "
                             f"pass -p root a writable folder, or leave it empty for the repository") from None
        return p

    def run(self, name: str) -> Path:
        """A training run's directory, e.g. ``run("s2dm")`` or ``run("toy/baseline-seed3")``."""
        return self.runs / name

    def require(self, path: Path, producer: str) -> Path:
        """``path`` if it exists (a staged figures path falls back to the published file of that name),
        else a clear error naming the notebook that produces it."""
        path, stage = Path(path), os.environ.get(STAGE_DIR)
        if not path.exists() and stage and path.resolve().is_relative_to(Path(stage).resolve()):
            path = self.published_figures / path.resolve().relative_to(Path(stage).resolve())
        if not Path(path).exists():
            raise FileNotFoundError(f"{path} is missing: run notebook {producer} first at profile "
                                    f"{self.profile!r} (make reproduce does this in order)")
        return Path(path)


def write_notebook_marker(P: Paths, notebook: str, since: float) -> Path:
    """``data/runs/<profile>/.notebooks/<notebook>.done``: one line naming the folders of ``P.runs`` the
    notebook wrote (a file modified since ``since``, or named by its previous marker and still there).
    The Makefile runs the notebook again when the marker or any folder it names is gone, so deleting
    ``data/runs/<profile>/images`` re-runs notebook 03 rather than leaving 04 asking for it."""
    marker = P.runs / ".notebooks" / f"{notebook}.done"
    before = marker.read_text().split() if marker.is_file() else []
    wrote = {d.name for d in P.runs.iterdir() if d.is_dir() and not d.name.startswith(".")
             and any(f.stat().st_mtime >= since for f in d.rglob("*") if f.is_file())}
    wrote |= {d for d in before if "/" not in d and (P.runs / d).is_dir()}
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(" ".join(sorted(wrote)) + "\n")
    return marker
