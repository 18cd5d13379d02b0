"""The preflight of a GPU run: everything profile ``gpu`` or ``paper`` will need, checked within seconds,
and the plan with its estimated hours (lib.experiment.preflight). ``make reproduce PROFILE=gpu|paper``
runs it first; a missing item stops it there, before any training, with a non-zero exit.

    python scripts/preflight.py --profile gpu [--dry-run] [--root DIR] [--set KEY=VALUE ...]

``--dry-run`` (e.g. on a CPU) only lists: a missing CUDA device is reported, not fatal.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def preflight_lines(profile: str, overrides=(), root=None, dry_run: bool = False) -> tuple[bool, list[str]]:
    """(ready, lines) for ``profile`` with ``overrides``; one line per problem naming its fix."""
    from lib.experiment import preflight
    from lib.infra import config

    try:
        cfg = config.get_config(profile, list(overrides))
    except config.ConfigError as e:
        return False, [f"preflight of profile {profile!r}: {e}"]
    return preflight.run(profile, cfg, Path(root).resolve() if root else None, dry_run=dry_run)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", required=True, help="gpu or paper (cpu and ci need no preflight: their data ship with packages)")
    p.add_argument("--root", default=None, help="output root for figures/ and data/runs/ (default: the repository)")
    p.add_argument("--dry-run", action="store_true", help="list only: a missing CUDA device is not fatal")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    a = p.parse_args(argv)
    ok, lines = preflight_lines(a.profile, a.overrides, a.root, a.dry_run)
    print("\n".join(lines))
    if not ok:
        print(f"preflight: not ready for profile {a.profile}: fix each MISSING line above, then run it again "
              f"(make fetch PROFILE={a.profile} puts the files in place on a machine with network)", file=sys.stderr)
        return 0 if a.dry_run else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
