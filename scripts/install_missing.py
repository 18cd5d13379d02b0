"""Install the pinned requirements this interpreter lacks, and nothing it already has (the Colab route).

    python scripts/install_missing.py [--requirements requirements.txt] [--dry-run]

Colab ships its own Python, CUDA torch, numpy, pandas, ...; reinstalling the project's pins over
them would pull gigabytes and could break its CUDA build. So a distribution that is present at any
version is kept; torch and torchvision are never installed (they are held at the installed versions
by a pip constraint, so no dependency can replace them either); only absent distributions are
installed, at their pinned versions, with the dependencies pip finds missing. Prints what it does;
with everything present it installs nothing and needs no network.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NEVER = ("torch", "torchvision")  # the platform's own build stays (Colab: CUDA; Binder: the CPU wheel)
_PIN = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;#]+)")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_version(name: str) -> str | None:
    """The installed version of distribution ``name``, or None when it is absent."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def plan(requirements: Path) -> tuple[list[str], list[str]]:
    """(pins to install, constraints): the ``name==version`` lines of ``requirements`` whose
    distribution is absent, skipping torch/torchvision; constraints hold torch/torchvision where present."""
    missing = []
    for line in requirements.read_text().splitlines():
        m = _PIN.match(line)
        if not m or _norm(m[1]) in NEVER:
            continue
        if installed_version(m[1]) is None:
            missing.append(f"{m[1]}=={m[2]}")
    held = [f"{n}=={v}" for n in NEVER if (v := installed_version(n)) is not None]
    return missing, held


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requirements", type=Path, default=ROOT / "requirements.txt")
    p.add_argument("--dry-run", action="store_true", help="print the pip command instead of running it")
    a = p.parse_args(argv)
    if not a.requirements.is_file():
        print(f"install_missing: {a.requirements} not found; pass --requirements PATH", file=sys.stderr)
        return 2
    missing, held = plan(a.requirements)
    if not missing:
        print(f"install_missing: every pinned package of {a.requirements.name} is present; nothing to install")
        return 0
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("\n".join(held) + "\n")
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "-c", f.name, *missing]
    print("install_missing: installing what is absent:", " ".join(missing),
          f"(holding {', '.join(held) or 'no torch'})", flush=True)
    try:
        if a.dry_run:
            print("install_missing: dry run:", " ".join(cmd))
            return 0
        r = subprocess.run(cmd)
    finally:
        Path(f.name).unlink(missing_ok=True)
    if r.returncode:
        print(f"install_missing: pip failed (exit {r.returncode}) installing {' '.join(missing)}; "
              "see pip's message above", file=sys.stderr)
    return r.returncode


if __name__ == "__main__":
    raise SystemExit(main())
