"""The rehearsal's fixtures (scripts/rehearse.py): stand-ins for every file only a GPU box has, made on
the spot under the rehearsal's root, never downloaded, and registered in its manifest (lib.infra.rehearsal).

* CIFAR-10 in its own format: ``data/cifar10/cifar-10-batches-py/data_batch_1..5``, ``test_batch`` and
  ``batches.meta``, pickled dicts of uint8 rows as the python-version tarball holds them, so
  lib.readers reads them through the one CIFAR-10 reader (its restricted unpickler included).
  The images are synthetic: a class-coloured blob on a noisy background, 32×32.
* The reference statistics clean-fid would read (``cifar10_legacy_tensorflow_train_32.npz``: μ, Σ),
  computed from the fixture's training images with the stand-in feature network
  (lib.measure.fid.StandIn) through clean-fid's own folder pipeline; written under the root, not in
  clean-fid's ``stats/`` folder.
* ``ema_cifar10``: random weights of the rehearsal's UNet (32 GroupNorm groups, as the DDPM code) as a
  plain state dict (the DDIM checkpoint layout), with its MD5 in the manifest; a normal run still checks
  the published MD5 and refuses it.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from lib import data, pretrained, readers
from lib.infra import rehearsal
from lib.infra.config import Config
from lib.infra.download import file_md5
from lib.measure import fid
from lib.unet import build_unet

PER_BATCH = 64  # images per CIFAR-10 batch file: 5 × 64 training images, 64 test images
STANDIN = {"seed": 0, "dim": 2048}


def synthetic_cifar(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` 32×32 RGB images as CIFAR-10 rows (uint8 [n, 3072], channel-major) and labels 0..9."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    yy, xx = np.mgrid[0:32, 0:32]
    colours = np.array([[(c * 37) % 256, (c * 91) % 256, (c * 151) % 256] for c in range(10)], dtype=np.float64)
    imgs = np.empty((n, 3, 32, 32), dtype=np.uint8)
    for i, c in enumerate(labels):
        cy, cx, r = rng.uniform(8, 24), rng.uniform(8, 24), rng.uniform(4, 10)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        img = 60 + 40 * rng.standard_normal((3, 32, 32)) + blob[None] * (colours[c][:, None, None] - 60)
        imgs[i] = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return imgs.reshape(n, 3072), labels


def write_cifar10(root: Path, per_batch: int = PER_BATCH) -> Path:
    """The CIFAR-10 fixture under ``root/data`` (lib.readers.cifar10_folder), in the tarball's pickle format."""
    folder = readers.cifar10_folder(Path(root) / "data")
    folder.mkdir(parents=True, exist_ok=True)
    for k, name in enumerate([*readers.CIFAR10_TRAIN_FILES, *readers.CIFAR10_TEST_FILES]):
        x, y = synthetic_cifar(per_batch, seed=k)
        entry = {b"batch_label": f"rehearsal fixture {name}".encode(), b"labels": [int(v) for v in y],
                 b"data": x, b"filenames": [f"fixture_{k}_{i}.png".encode() for i in range(per_batch)]}
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f, protocol=2)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"class{c}".encode() for c in range(10)], b"num_vis": 3072,
                     b"num_cases_per_batch": per_batch}, f, protocol=2)
    return folder


def write_stats(root: Path, cfg: Config) -> dict:
    """μ, Σ of the stand-in features of the fixture's training images, under clean-fid's file name."""
    images, _ = data.load_images(cfg.data)
    feats = fid.inception_features(images, mode=cfg.eval.fid_mode, device="cpu",
                                   feat_extractor=fid.StandIn(**STANDIN)).astype(np.float64)
    name = fid.stats_filename(cfg.data.dataset, cfg.eval.fid_mode, cfg.data.image_size, "train")
    p = Path(root) / "fixtures" / name
    p.parent.mkdir(parents=True, exist_ok=True)
    np.savez(p, mu=feats.mean(0), sigma=np.cov(feats, rowvar=False))
    return {name: {"path": str(p.resolve()), "sha256": rehearsal.sha256(p)}}


def write_checkpoint(root: Path, cfg: Config, name: str = "ema_cifar10", seed: int = 0) -> dict:
    """Random weights of ``cfg``'s UNet in the DDIM layout (a plain state dict) where ``name`` would lie."""
    torch.manual_seed(seed)
    model = build_unet(cfg.model, norm_groups=pretrained.REFERENCE_GROUPS)
    entry = pretrained.CHECKPOINTS[name]
    p = Path(root) / "data" / "pretrained" / name / entry["file"]
    p.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.clone() for k, v in model.state_dict().items()}, p)
    return {name: {"path": str(p.resolve()), "md5": file_md5(p)}}


def make(root, profile: str, cfg: Config, overrides, notebook_08: dict) -> Path:
    """Every fixture under ``root`` and the manifest ``root/REHEARSAL.json`` naming them; returns its path.
    ``cfg`` is the profile with the rehearsal's sizes and data root (not yet naming the manifest)."""
    root = Path(root).resolve()
    write_cifar10(root)
    stats = write_stats(root, cfg)
    checkpoints = write_checkpoint(root, cfg)
    return rehearsal.write(root / rehearsal.NAME, profile=profile, standin=STANDIN, stats=stats,
                           checkpoints=checkpoints, notebook_08=notebook_08, overrides=overrides)
