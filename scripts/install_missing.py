"""Install the pinned requirements this interpreter lacks, and nothing it already has (the Colab route,
and the GPU check's offline route): the project's one package installer.

    python scripts/install_missing.py [--requirements requirements.txt ...] [--only NAME,...] [--offline DIR] [--dry-run]
    python scripts/install_missing.py --wheel-list [--only NAME,...]     # what to `pip download` for --offline

Colab ships its own Python, CUDA torch, numpy, pandas, ...; reinstalling the project's pins over
them would pull gigabytes and could break its CUDA build. So a distribution that is present at any
version is kept; torch and torchvision are never installed (they are held at the installed versions
by a pip constraint, so no dependency can replace them either); only absent distributions are
installed, at their pinned versions, with the dependencies pip finds missing. Prints what it does;
with everything present it installs nothing and needs no network. ``--only`` restricts the pins to
some distributions; ``--offline DIR`` installs from a folder of wheels without network (``make
gpu-check`` does this with ``.whl/`` for diffusers, clean-fid and mlxtend on a machine with its own
PyTorch); ``--wheel-list`` prints the pinned closure of those distributions as this environment
resolved them, less what a PyTorch machine ships with: the list for ``pip download --no-deps``.
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


def plan(requirements, only=None) -> tuple[list[str], list[str]]:
    """(pins to install, constraints): the ``name==version`` lines of ``requirements`` (a file or several)
    whose distribution is absent (and among ``only``, when given), skipping torch/torchvision;
    constraints hold torch/torchvision where present."""
    files = [requirements] if isinstance(requirements, (str, Path)) else list(requirements)
    wanted = None if only is None else {_norm(n) for n in only}
    missing = []
    for line in (ln for path in files for ln in Path(path).read_text().splitlines()):
        m = _PIN.match(line)
        if not m or _norm(m[1]) in NEVER or (wanted is not None and _norm(m[1]) not in wanted):
            continue
        if installed_version(m[1]) is None:
            missing.append(f"{m[1]}=={m[2]}")
    held = [f"{n}=={v}" for n in NEVER if (v := installed_version(n)) is not None]
    return missing, held


# What a GPU machine with a preinstalled PyTorch already has (and offline wheels must never replace).
PREINSTALLED = {"torch", "torchvision", "triton", "numpy", "scipy", "matplotlib", "pandas", "scikit-learn", "pillow",
                "tqdm", "pytest", "filelock", "fsspec", "typing-extensions", "sympy", "networkx", "jinja2", "packaging",
                "setuptools", "joblib", "threadpoolctl", "python-dateutil", "six"}
GPU_CHECK_EXTRAS = ("diffusers", "clean-fid", "mlxtend")  # what bench/gpu_check.py can use beyond a PyTorch machine


def wheel_requirements(roots=GPU_CHECK_EXTRAS) -> list[str]:
    """``name==version`` for ``roots`` and every dependency of theirs installed here (their closure, as
    this environment resolved it), less what a PyTorch machine ships with: the list ``pip download
    --no-deps`` needs for an offline ``--offline DIR`` install."""
    from packaging.requirements import Requirement

    seen, out, todo = set(), [], list(roots)
    while todo:
        name = _norm(todo.pop())
        if name in seen or name in PREINSTALLED or name.startswith("nvidia-"):
            continue
        seen.add(name)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise SystemExit(f"install_missing: {name} is not installed in this environment ({sys.executable}); run "
                             f"--wheel-list with the project's .venv (make venv; requirements-dev.txt has diffusers)") from None
        out.append(f"{dist.metadata['Name']}=={dist.version}")
        for req in dist.requires or []:
            r = Requirement(req)
            if r.marker is None or r.marker.evaluate({"extra": ""}):  # extras and other platforms: not needed
                todo.append(r.name)
    return sorted(out, key=str.lower)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requirements", type=Path, action="append", default=None,
                   help="a pinned requirements file (repeatable; default requirements.txt)")
    p.add_argument("--only", default=None, help="comma-separated distribution names: install only these pins")
    p.add_argument("--offline", type=Path, default=None, metavar="DIR",
                   help="install from this folder of wheels, without network (pip --no-index --find-links DIR)")
    p.add_argument("--wheel-list", action="store_true",
                   help="print the pinned closure of --only (default: the GPU check's extras) for pip download, and exit")
    p.add_argument("--dry-run", action="store_true", help="print the pip command instead of running it")
    a = p.parse_args(argv)
    only = [n.strip() for n in a.only.split(",") if n.strip()] if a.only else None
    if a.wheel_list:
        print("\n".join(wheel_requirements(only or GPU_CHECK_EXTRAS)))
        return 0
    reqs = a.requirements or [ROOT / "requirements.txt"]
    for r in reqs:
        if not r.is_file():
            print(f"install_missing: {r} not found; pass --requirements PATH", file=sys.stderr)
            return 2
    if a.offline is not None and not a.offline.is_dir():
        print(f"install_missing: wheel folder {a.offline} not found; build it with --wheel-list and pip download "
              f"(docs/GPU.md), or leave --offline out", file=sys.stderr)
        return 2
    missing, held = plan(reqs, only)
    if not missing:
        print(f"install_missing: every pinned package{' of ' + ', '.join(only) if only else ''} in "
              f"{', '.join(r.name for r in reqs)} is present; nothing to install")
        return 0
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("\n".join(held) + "\n")
    offline = ["--no-index", "--find-links", str(a.offline)] if a.offline is not None else []
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", *offline, "-c", f.name, *missing]
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
