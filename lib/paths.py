"""Where a profile's outputs live: figures and tables under ``figures/<profile>/``, trained runs and
sample sets under ``data/runs/<profile>/``. Notebooks talk to each other only through these files."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Paths:
    """Output folders of one profile; ``root`` (default: the repository) lets tests run elsewhere."""

    profile: str
    root: Path | None = None

    @property
    def base(self) -> Path:
        return Path(self.root) if self.root else ROOT

    @property
    def figures(self) -> Path:
        p = self.base / "figures" / self.profile
        p.mkdir(parents=True, exist_ok=True)
        return p

    @property
    def runs(self) -> Path:
        p = self.base / "data" / "runs" / self.profile
        p.mkdir(parents=True, exist_ok=True)
        return p

    def run(self, name: str) -> Path:
        """A training run's directory, e.g. ``run("s2dm")`` or ``run("toy/baseline-seed3")``."""
        return self.runs / name

    def require(self, path: Path, producer: str) -> Path:
        """``path`` if it exists, else a clear error naming the notebook that produces it."""
        if not Path(path).exists():
            raise FileNotFoundError(f"{path} is missing: run notebook {producer} first at profile "
                                    f"{self.profile!r} (make reproduce does this in order)")
        return Path(path)
