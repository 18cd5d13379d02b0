"""Everything a profile needs on a machine with network (``make fetch PROFILE=gpu``): the dataset,
clean-fid's Inception weights and reference statistics, and the pretrained checkpoint.

    python -m lib.experiment.fetch --profile gpu

The only step of the project that uses the network; everything else runs offline and says what to
fetch when a file is missing.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lib import pretrained, readers
from lib.infra import download
from lib.infra.config import ConfigError, get_config
from lib.infra.paths import ROOT
from lib.measure import fid


def _in_place(path: Path, kind: str) -> bool:
    """True when ``path`` holds a file of ``kind``; one that is not (an HTML page installed by an earlier
    version) is removed, saying so, and fetched again."""
    if not path.is_file():
        return False
    problem = download.download_problem(path, kind)
    if problem:
        print(f"{path}: {problem}; removing it and downloading it again", file=sys.stderr)
        path.unlink()
    return problem is None


def fetch_profile(profile: str, root=None) -> list[str]:
    """Everything a profile needs on a machine with network (``make fetch PROFILE=gpu``): CIFAR-10, clean-fid's
    Inception weights and CIFAR-10 training statistics, and the DDPM CIFAR-10 EMA checkpoint."""
    cfg = get_config(profile)
    done = []
    if cfg.data.dataset == "cifar10":
        folder = readers.cifar10_folder(Path(root or ROOT) / cfg.data.root)
        readers.load_cifar10(Path(root or ROOT) / cfg.data.root, download=True)
        done.append(f"CIFAR-10 in {folder} (torchvision checks the tarball's MD5)")
    if cfg.eval.metric == "inception":
        fid.check_offline(cfg.eval.fid_mode, cfg.data.dataset, cfg.data.image_size, "train",
                          need_weights=False, need_stats=False)  # the mode is known
        w = Path(fid.INCEPTION_DIR) / fid.INCEPTION_FILE
        if not _in_place(w, "torch"):
            download.download(fid.INCEPTION_URL, w, None, kind="torch")
        name = fid.stats_filename(cfg.data.dataset, cfg.eval.fid_mode, cfg.data.image_size, "train")
        s = Path(fid.STATS_DIR) / name
        if not _in_place(s, "npz"):
            download.download(fid.STATS_URL + name, s, None, kind="npz")
        paths = fid.check_offline(cfg.eval.fid_mode, cfg.data.dataset, cfg.data.image_size, "train")
        done += [f"{k}: {v} (MD5 {download.file_md5(v)}; clean-fid publishes no checksum to compare with)" for k, v in paths.items()]
    if cfg.data.dataset == "cifar10":
        p = pretrained.fetch("ema_cifar10", root)
        done.append(f"ema_cifar10: {p} (MD5 verified)")
    if not done:
        done.append(f"profile {profile} needs no download (its data ship with the packages; metric {cfg.eval.metric})")
    return done


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m lib.experiment.fetch", description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", default="gpu", help="the profile whose files to fetch (default gpu)")
    p.add_argument("--root", default=None, help="repository root to write data/ under (default: this repository)")
    a = p.parse_args(argv)
    try:
        for line in fetch_profile(a.profile, a.root):
            print(line)
    except (pretrained.PretrainedError, pretrained.PretrainedMissing, download.DownloadFailed, download.DownloadRefused,
            readers.DatasetMissing, fid.FIDWeightsMissing, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
