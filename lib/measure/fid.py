"""Inception FID through clean-fid 0.1.35, offline-safe (profiles ``gpu`` and ``paper`` only).

clean-fid downloads two things on first use: the Inception weights (the StyleGAN2-ADA torchscript
``inception-2015-12-05.pt``, read from ``/tmp``) and the reference statistics
(``<cleanfid>/stats/<dataset>_<mode>_<split>_<res>.npz``). Without network that download fails
with a raw urllib traceback deep inside a run. :func:`check_offline` looks for both files first
and raises :class:`FIDWeightsMissing`, naming each missing file, where to put it and the URL
clean-fid would have fetched it from. The Inception network is then built with
``download=False``, so this module never touches the network.

``mode="legacy_tensorflow"`` reproduces the TensorFlow FID that papers report (the resize happens
inside the network); ``mode="clean"`` is clean-fid's own PIL-bicubic variant. Numbers from the two
modes, and from the classifier FD of ``lib/measure/metrics.py``, are not comparable.

With ``feat_extractor`` (any callable mapping float images [B, 3, H, W] in [0, 255] to features
[B, D]) and ``ref_images``, the whole clean-fid folder pipeline runs without Inception weights:
the tests use this with a tiny random-conv stand-in. A rehearsal of the GPU route (lib.infra.rehearsal)
passes its manifest instead: features come from :class:`StandIn` (the same contract as the Inception
network, built in memory from the manifest's seed) and the reference statistics from the manifest's
fixture, never from clean-fid's folders, and nothing is written where clean-fid looks for its files.
"""
from __future__ import annotations

import os
import platform
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

import cleanfid
import cleanfid.fid
from cleanfid.downloads_helper import inception_url as INCEPTION_URL

MODES = ("legacy_tensorflow", "clean")
INCEPTION_FILE = "inception-2015-12-05.pt"
# Where clean-fid's feature_extractor() looks for the weights (cleanfid/features.py).
INCEPTION_DIR = "./" if platform.system() == "Windows" else "/tmp"
# Where clean-fid's get_reference_statistics() looks for the statistics, and where it downloads them from.
STATS_DIR = os.path.join(os.path.dirname(cleanfid.__file__), "stats")
STATS_URL = "https://www.cs.cmu.edu/~clean-fid/stats/"


class FIDWeightsMissing(RuntimeError):
    """The Inception weights or reference statistics clean-fid needs are not on this machine."""


def stats_filename(dataset: str, mode: str, dataset_res, split: str) -> str:
    """clean-fid's name for the reference statistics (Inception v3, FID), e.g. cifar10_legacy_tensorflow_train_32.npz."""
    res = "na" if split == "custom" else dataset_res
    return f"{dataset}_{mode}_{split}_{res}.npz".lower()


def check_offline(mode: str, dataset: str = "cifar10", dataset_res: int = 32, split: str = "train", *,
                  need_weights: bool = True, need_stats: bool = True) -> dict:
    """Check that the files clean-fid would download are present; return their paths, or raise
    :class:`FIDWeightsMissing` naming every missing file, its place and its download URL."""
    if mode not in MODES:
        raise ValueError(f"unknown FID mode {mode!r}; valid: {', '.join(MODES)}")
    paths, missing = {}, []
    if need_weights:
        p = Path(INCEPTION_DIR) / INCEPTION_FILE
        paths["weights"] = str(p)
        if not p.is_file():
            missing.append(f"- the Inception weights {INCEPTION_FILE}: place them at {p}\n"
                           f"  download: {INCEPTION_URL}\n"
                           f"  e.g. `wget -O {p} {INCEPTION_URL}`")
    if need_stats:
        name = stats_filename(dataset, mode, dataset_res, split)
        p = Path(STATS_DIR) / name
        paths["stats"] = str(p)
        if not p.is_file():
            missing.append(f"- the reference statistics {name} ({dataset}, {split} split, {dataset_res}px, mode {mode}): "
                           f"place them at {p}\n"
                           f"  download: {STATS_URL}{name}\n"
                           f"  e.g. `mkdir -p {p.parent} && wget -O {p} {STATS_URL}{name}`")
    if missing:
        raise FIDWeightsMissing(
            "Inception FID cannot run offline: clean-fid would try to download these files.\n"
            + "\n".join(missing)
            + "\n(On a machine with network, `make fetch PROFILE=gpu` downloads them (clean-fid also fetches them on first "
              "use); copy them to the paths above. "
              "Without them, use eval.metric=classifier, the offline classifier FD.)")
    return paths


class StandIn(torch.nn.Module):
    """A stand-in for clean-fid's Inception network in a rehearsal, with its input and output contract:
    float images [B, 3, H, W] in [0, 255] (as clean-fid's loader hands them) in, [B, 2048] features out.
    Two random convolutions (weights from ``seed``, so every process builds the same network) and an 8×8
    average pool: features that move with the images, and nothing to download or install."""

    def __init__(self, seed: int = 0, dim: int = 2048):
        super().__init__()
        if dim % 64:
            raise ValueError(f"the stand-in's feature dimension must be a multiple of 64, got {dim}")
        g = torch.Generator().manual_seed(int(seed))
        self.c1 = torch.nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.c2 = torch.nn.Conv2d(16, dim // 64, 3, stride=1, padding=1)
        with torch.no_grad():
            for conv in (self.c1, self.c2):
                fan_in = conv.weight[0].numel()
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) / fan_in ** 0.5)
                conv.bias.copy_(0.1 * torch.randn(conv.bias.shape, generator=g))
        self.dim = dim

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.c1.weight.dtype) / 127.5 - 1.0
        h = torch.relu(self.c2(torch.relu(self.c1(x))))
        return torch.nn.functional.adaptive_avg_pool2d(h, 8).flatten(1)


def standin_for(manifest, device=None):
    """The manifest's :class:`StandIn` on ``device`` (None without a manifest: the real Inception network)."""
    if manifest is None:
        return None
    return StandIn(manifest.standin_seed, manifest.standin_dim).to(device or "cpu").eval()


def clean_fid_code() -> str:
    """A hash of the installed clean-fid's Python sources (its preprocessing decides the features; the
    package carries no version attribute to read instead)."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted(Path(cleanfid.__file__).parent.glob("*.py")):
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def network_id(mode: str, manifest=None) -> str:
    """What computes the features, for cache keys and table titles."""
    if manifest is not None:
        return f"rehearsal stand-in (seed {manifest.standin_seed}, {manifest.standin_dim}-d; not Inception)"
    return f"clean-fid Inception ({INCEPTION_FILE}, mode {mode})"


def _inception(mode: str, device) -> callable:
    """clean-fid's Inception feature network for ``mode``, loaded from INCEPTION_DIR without download."""
    from cleanfid.inception_torchscript import InceptionV3W

    # legacy_tensorflow resizes inside the network (as TF FID did); clean mode gets 299×299 PIL-resized input.
    model = InceptionV3W(INCEPTION_DIR, download=False, resize_inside=(mode == "legacy_tensorflow")).to(device).eval()
    return lambda x: model(x)


def _as_folder(images, folder: Path) -> str:
    """A folder of images for clean-fid: an existing folder is used as it is, a uint8 tensor
    [N, C, H, W] (C = 1 or 3) is written as lossless PNGs."""
    if isinstance(images, (str, os.PathLike)):
        p = Path(images)
        if not p.is_dir() or not any(f.suffix.lower() in (".png", ".jpg", ".jpeg") for f in p.rglob("*")):
            raise ValueError(f"{p} is not a folder of PNG/JPEG images")
        return str(p)
    from PIL import Image

    x = torch.as_tensor(images)
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] not in (1, 3):
        raise TypeError(f"images must be a uint8 tensor [N, 1 or 3, H, W] (see lib.data.from_model_range), "
                        f"got {x.dtype} {tuple(x.shape)}")
    arr = x.cpu().numpy()
    folder.mkdir(parents=True)
    for i in range(len(arr)):
        img = arr[i, 0] if arr.shape[1] == 1 else np.ascontiguousarray(arr[i].transpose(1, 2, 0))
        Image.fromarray(img).save(folder / f"{i:06d}.png", compress_level=1)
    return str(folder)


def inception_fid(images, *, dataset: str = "cifar10", dataset_res: int = 32, split: str = "train",
                  mode: str = "legacy_tensorflow", device=None, batch_size: int = 100, num_workers: int = 0,
                  feat_extractor=None, ref_images=None, verbose: bool = False) -> float:
    """FID of ``images`` (uint8 tensor [N, 3, H, W] or a folder of images) by clean-fid's ``compute_fid``.

    Against clean-fid's reference statistics of ``dataset``/``dataset_res``/``split`` by default,
    or against ``ref_images`` (tensor or folder) when given. ``feat_extractor`` replaces the
    Inception network and then requires ``ref_images`` (the stored statistics are Inception features)."""
    if mode not in MODES:
        raise ValueError(f"unknown FID mode {mode!r}; valid: {', '.join(MODES)}")
    if feat_extractor is not None and ref_images is None:
        raise ValueError("a stand-in feat_extractor needs ref_images: clean-fid's stored reference statistics "
                         "are Inception features and cannot be compared with another network's")
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    check_offline(mode, dataset, dataset_res, split, need_weights=feat_extractor is None,
                  need_stats=ref_images is None)
    feat_model = feat_extractor if feat_extractor is not None else _inception(mode, device)
    with tempfile.TemporaryDirectory(prefix="fid_") as tmp:
        gen_dir = _as_folder(images, Path(tmp) / "gen")
        ref_dir = _as_folder(ref_images, Path(tmp) / "ref") if ref_images is not None else None
        with warnings.catch_warnings():
            # clean-fid 0.1.35 calls scipy's sqrtm(disp=False), deprecated since SciPy 1.16
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            score = cleanfid.fid.compute_fid(
                gen_dir, ref_dir, mode=mode, dataset_name=dataset, dataset_res=dataset_res, dataset_split=split,
                device=device, num_workers=num_workers, batch_size=batch_size, custom_feat_extractor=feat_model,
                verbose=verbose, use_dataparallel=False)
    return float(score)


def inception_features(images, *, mode: str = "legacy_tensorflow", device=None, batch_size: int = 100,
                       num_workers: int = 0, feat_extractor=None, manifest=None) -> np.ndarray:
    """clean-fid's Inception features [N, 2048] of ``images`` with exactly compute_fid's preprocessing
    (PNG round trip, mode-specific resize), so their statistics can be bootstrapped (lib.measure.metrics).
    With a rehearsal ``manifest``: the same pipeline with the manifest's :class:`StandIn`."""
    if mode not in MODES:
        raise ValueError(f"unknown FID mode {mode!r}; valid: {', '.join(MODES)}")
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    feat_extractor = feat_extractor if feat_extractor is not None else standin_for(manifest, device)
    check_offline(mode, need_weights=feat_extractor is None, need_stats=False)
    model = feat_extractor if feat_extractor is not None else _inception(mode, device)
    with tempfile.TemporaryDirectory(prefix="fidfeat_") as tmp:
        folder = _as_folder(images, Path(tmp) / "gen")
        return cleanfid.fid.get_folder_features(folder, model, num_workers=num_workers, batch_size=batch_size,
                                                device=device, mode=mode, description="features ", verbose=False)


def reference_stats(dataset: str = "cifar10", dataset_res: int = 32, split: str = "train",
                    mode: str = "legacy_tensorflow", manifest=None) -> tuple[np.ndarray, np.ndarray]:
    """clean-fid's stored reference (μ, Σ) of the dataset's Inception features (checked offline first);
    with a rehearsal ``manifest``, the fixture it lists under clean-fid's file name (checksum verified)."""
    if manifest is not None:
        path = manifest.stats_path(stats_filename(dataset, mode, dataset_res, split))
    else:
        path = check_offline(mode, dataset, dataset_res, split, need_weights=False)["stats"]
    with np.load(path, allow_pickle=False) as f:
        return f["mu"], f["sigma"]
