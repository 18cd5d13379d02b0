"""Rehearse the GPU route on any machine: every notebook through the ``gpu`` or ``paper`` profile's own code
paths, with only sizes shrunk, on fixtures made on the spot (lib.experiment.fixtures).

    python scripts/rehearse.py --profile gpu [--root DIR] [--notebooks 03,04] [--fresh]
    make rehearse PROFILE=paper

Everything goes under DIR (default ``data/rehearse``): the fixtures and their manifest
(``DIR/REHEARSAL.json``), ``DIR/figures/<profile>/`` (executed notebooks, tables, figures, and
``REHEARSAL.md`` saying that none of them is a result) and ``DIR/data/runs/<profile>/``; never the
repository's ``figures/`` or ``data/runs/``. On CUDA the notebooks run there; on a CPU the overrides add
``train.device=cpu`` (said in one line). At ``paper`` every training run of notebook 03 goes through
torchrun (two processes over gloo on a CPU).

A second run resumes: a notebook whose executed copy exists and whose stamp (the overrides and a hash of
lib/, notebooks/ and scripts/) matches is not run again, unless one before it ran; training runs and
caches resume through their own checks. ``--notebooks`` runs exactly the listed ones.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

PROFILES = ("gpu", "paper")


def code_hash() -> str:
    """One hash of what a rehearsal executes: lib/, the notebooks and the scripts."""
    h = hashlib.sha256()
    for p in sorted([*ROOT.glob("lib/**/*.py"), *ROOT.glob("notebooks/*.ipynb"), *ROOT.glob("scripts/*.py")]):
        h.update(str(p.relative_to(ROOT)).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def size_overrides(profile: str, root: Path, device: str) -> list[str]:
    """The rehearsal's overrides on ``profile``: sizes only (lib.infra.profiles.REHEARSAL_SIZES), the data root
    of the fixtures and, without CUDA, the CPU."""
    from lib.infra import profiles

    sizes = {**profiles.REHEARSAL_SIZES, **profiles.REHEARSAL_PROFILE_SIZES[profile]}
    if device == "cpu":
        sizes["train.device"] = "cpu"
    elif profile == "paper":
        sizes["train.nproc"] = 0  # one process per GPU present, as the profile itself
    sizes["data.root"] = str(root / "data")
    return [f"{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in sizes.items()]


def fixtures_ok(manifest_path: Path) -> bool:
    """True when the manifest loads and every file it lists is there with its checksum."""
    from lib.infra import rehearsal
    from lib.infra.download import file_md5

    try:
        m = rehearsal.load(manifest_path)
        for name in m.stats:
            m.stats_path(name)
        return all(Path(e["path"]).is_file() and file_md5(e["path"]) == e["md5"] for e in m.checkpoints.values())
    except rehearsal.ManifestError:
        return False


def write_note(out: Path, profile: str, overrides: list[str], device: str, manifest: Path, nb08: dict) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"# A rehearsal of profile `{profile}`: no number here is a result", "",
             f"These tables and figures come from `python scripts/rehearse.py --profile {profile}`: the `{profile}` "
             f"notebooks through the profile's own code paths on {device}, with only sizes shrunk, on fixtures "
             "(synthetic images in CIFAR-10's format, a random stand-in for the Inception network and statistics "
             "computed with it, random weights under the name `ema_cifar10`). They test that the route runs; "
             "they measure nothing.", "", f"Manifest: `{manifest.name}` at the rehearsal's root.", "",
             "Overrides on the profile:", "", *[f"- `{o}`" for o in overrides], "",
             f"Notebook 08's plan (from the manifest): {nb08}. Notebook 02's Monte Carlo checks take ci's 20,000 "
             "draws per cell.", ""]
    p = out / "REHEARSAL.md"
    p.write_text("\n".join(lines), encoding="utf-8")
    return p


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", required=True, help="gpu or paper")
    p.add_argument("--root", type=Path, default=ROOT / "data" / "rehearse", help="where everything goes (default data/rehearse)")
    p.add_argument("--notebooks", default="", help="comma-separated numbers (e.g. 03,04): run exactly these")
    p.add_argument("--fresh", action="store_true", help="delete the root's profile outputs first")
    a = p.parse_args(argv)
    if a.profile not in PROFILES:
        print(f"error: a rehearsal is of profile gpu or paper, not {a.profile!r} (the ci profile is what "
              f"`make test` runs the notebooks at)", file=sys.stderr)
        return 2
    root = a.root.resolve()
    if root == ROOT:
        print(f"error: --root {a.root} is the repository itself; a rehearsal must not write into its figures/ or "
              f"data/runs/: choose another folder (default data/rehearse)", file=sys.stderr)
        return 2
    import torch

    from lib.experiment import fixtures
    from lib.infra import config, profiles, rehearsal
    from lib.infra.paths import Paths
    import run_notebook

    t0 = time.time()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"rehearsal of profile {a.profile} under {root} on "
          + ("CUDA" if device == "cuda" else "the CPU (no CUDA device: train.device=cpu added to the overrides)"),
          flush=True)
    P = Paths(a.profile, root)
    if a.fresh:
        for d in (P.published_figures, root / "data" / "runs" / a.profile):
            shutil.rmtree(d, ignore_errors=True)
    overrides = size_overrides(a.profile, root, device)
    try:
        cfg = config.get_config(a.profile, overrides)
    except config.ConfigError as e:
        print(f"error: the rehearsal's overrides do not fit profile {a.profile}: {e}", file=sys.stderr)
        return 2
    manifest = root / rehearsal.NAME
    nb08 = dict(profiles.REHEARSAL_NOTEBOOK_08)
    if not fixtures_ok(manifest):
        print("making the fixtures (CIFAR-10 format batches, stand-in statistics, ema_cifar10 weights)", flush=True)
        fixtures.make(root, a.profile, cfg, overrides, nb08)
    overrides = [*overrides, f"experiment.rehearsal={manifest}"]
    print("overrides (sizes only; REHEARSAL.md records them beside the tables):\n  " + "\n  ".join(overrides), flush=True)
    write_note(P.published_figures, a.profile, overrides, device, manifest, nb08)

    from preflight import preflight_lines
    ok, lines = preflight_lines(a.profile, overrides, root)
    print("\n".join(lines), flush=True)
    if not ok:
        print("error: the preflight failed on the rehearsal's own fixtures (above)", file=sys.stderr)
        return 1

    notebooks = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    wanted = {n.strip() for n in a.notebooks.split(",") if n.strip()}
    unknown = wanted - {nb.name[:2] for nb in notebooks}
    if unknown:
        print(f"error: no notebook numbered {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    stamp_dir, code = P.published_figures / ".rehearsal", code_hash()
    stamp = {"overrides": overrides, "code": code}
    upstream_ran = False
    for nb in notebooks:
        if wanted and nb.name[:2] not in wanted:
            continue
        s = stamp_dir / f"{nb.stem}.json"
        done = (P.published_figures / nb.name).is_file() and s.is_file() and json.loads(s.read_text()) == stamp
        if done and not wanted and not upstream_ran:
            print(f"-- {nb.name}: done at this code and these overrides (its stamp matches); not run again", flush=True)
            continue
        s.unlink(missing_ok=True)
        try:
            run_notebook.run(nb, a.profile, root, overrides=overrides)
        except SystemExit as e:
            if e.code:
                print(f"rehearsal of {a.profile} failed at {nb.name} after {time.time() - t0:.0f} s; run the same "
                      f"command again to resume", file=sys.stderr)
                return 1
        upstream_ran = True
        s.parent.mkdir(parents=True, exist_ok=True)
        s.write_text(json.dumps(stamp))
    print(f"rehearsal of profile {a.profile} passed in {time.time() - t0:.0f} s; outputs under {P.published_figures} "
          f"(none of them a result: REHEARSAL.md)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
