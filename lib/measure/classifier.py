"""The FD_clf feature network: a small CNN classifier trained on the dataset's own labels, cached.

Its penultimate features are what :mod:`lib.measure.metrics` measures the Fréchet distance on at profiles
ci/cpu (FD_clf, offline; never called FID: its numbers are on another scale than Inception FID,
``lib/measure/fid.py``). It runs without downloads on digits, MNIST-5k and CIFAR-10.
"""
from __future__ import annotations

import json
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from lib.infra.checkpoint import atomic_write_bytes

CLASSIFIER_DATASETS = ("digits", "mnist", "cifar10")


class FeatureClassifier(nn.Module):
    """conv3×3 → SiLU → avgpool2 → conv3×3 → SiLU → avgpool2 → conv3×3 → SiLU → adaptive avgpool
    (4×4, or 2×2 below 16 px) → linear → SiLU (the features, 4·width wide) → linear head.

    SiLU rather than ReLU keeps the features free of exact zeros (dead units make the feature
    covariance singular)."""

    def __init__(self, in_channels: int, resolution: int, n_classes: int, width: int = 32):
        super().__init__()
        self.arch = dict(in_channels=in_channels, resolution=resolution, n_classes=n_classes, width=width)
        w = width
        pooled = 4 if resolution >= 16 else 2
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1), nn.SiLU(), nn.AvgPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.SiLU(), nn.AvgPool2d(2),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.SiLU(), nn.AdaptiveAvgPool2d(pooled), nn.Flatten(),
            nn.Linear(2 * w * pooled * pooled, 4 * w), nn.SiLU(),
        )
        self.head = nn.Linear(4 * w, n_classes)
        self.feature_dim = 4 * w
        self.meta: dict = {}

    def features(self, x: torch.Tensor) -> torch.Tensor:
        c, r = self.arch["in_channels"], self.arch["resolution"]
        if x.ndim != 4 or x.shape[1] != c or x.shape[2:] != (r, r):
            raise ValueError(f"this classifier takes images [N, {c}, {r}, {r}] in [-1, 1], got {tuple(x.shape)}")
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def train_classifier(images_uint8: torch.Tensor, labels: torch.Tensor, *, steps: int, width: int, seed: int = 0,
                     device="cpu", progress: bool = True, batch_size: int = 128, lr: float = 2e-3) -> nn.Module:
    """Train :class:`FeatureClassifier` with Adam on 90% of the images (in model range [-1, 1]);
    the accuracy on the held-out 10% is printed and stored in ``model.meta['heldout_accuracy']``.
    Returns the model in eval mode on ``device``."""
    from lib.infra.progress import tqdm

    from lib.data import to_model_range

    if labels is None:
        raise ValueError("the classifier needs labels; this dataset has none (use eval.metric='inception')")
    n, c, h, w = images_uint8.shape
    if h != w:
        raise ValueError(f"square images expected, got {h}x{w}")
    labels = torch.as_tensor(labels, dtype=torch.int64)
    n_classes = int(labels.max()) + 1
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=gen)
    n_val = max(1, n // 10)
    val_idx, tr_idx = perm[:n_val], perm[n_val:]
    x_all = to_model_range(images_uint8).to(device)
    y_all = labels.to(device)

    with torch.random.fork_rng(devices=[]):  # seeded initialisation without touching the global RNG
        torch.manual_seed(seed)
        model = FeatureClassifier(c, h, n_classes, width).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    t0 = time.time()
    bar = tqdm(range(steps), desc="FD_clf classifier", disable=not progress)
    for _ in bar:
        b = tr_idx[torch.randint(len(tr_idx), (batch_size,), generator=gen)].to(device)
        loss = F.cross_entropy(model(x_all[b]), y_all[b])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    model.eval()
    with torch.no_grad():
        val_idx = val_idx.to(device)
        pred = torch.cat([model(x_all[val_idx[i:i + 1000]]).argmax(1) for i in range(0, n_val, 1000)])
        acc = float((pred == y_all[val_idx]).float().mean())
    model.meta = dict(heldout_accuracy=acc, n_train=len(tr_idx), n_heldout=n_val, steps=steps, seed=seed,
                      batch_size=batch_size, lr=lr, train_seconds=round(time.time() - t0, 1))
    if progress:
        print(f"FD_clf classifier: held-out accuracy {acc:.3f} on {n_val} images after {steps} steps")
    return model


def classifier_key(data_cfg, eval_cfg) -> str:
    return (f"{data_cfg.dataset}_{data_cfg.image_size}px_w{eval_cfg.classifier_width}"
            f"_s{eval_cfg.classifier_steps}")


def get_classifier(data_cfg, eval_cfg, cache_dir="data/classifiers", device="cpu", progress: bool = True) -> nn.Module:
    """The FD_clf classifier for this dataset and image size: trained once on *all* labelled images of
    the dataset (whatever ``data.n_train`` is), then cached as ``<key>.pt`` (state dict) and
    ``<key>.json`` (architecture, accuracy, settings), with key dataset/image_size/width/steps."""
    from lib.data import load_images

    if data_cfg.dataset not in CLASSIFIER_DATASETS:
        raise ValueError(f"FD_clf needs a labelled image dataset ({', '.join(CLASSIFIER_DATASETS)}), got "
                         f"{data_cfg.dataset!r}; use eval.metric='inception' for CelebA")
    cache_dir = Path(cache_dir)
    key = classifier_key(data_cfg, eval_cfg)
    pt, js = cache_dir / f"{key}.pt", cache_dir / f"{key}.json"
    code = classifier_code()
    if pt.is_file() or js.is_file():
        model, why = _cached(pt, js, key, code)
        if model is not None:
            return model.to(device).eval()
        warnings.warn(f"the FD_clf classifier cache {pt} {why}; training it again", stacklevel=2)

    images, labels = load_images(replace(data_cfg, n_train=0))
    model = train_classifier(images, labels, steps=eval_cfg.classifier_steps, width=eval_cfg.classifier_width,
                             device=device, progress=progress)
    meta = dict(model.meta, arch=model.arch, key=key, dataset=data_cfg.dataset, image_size=data_cfg.image_size,
                feature_dim=model.feature_dim, n_images=len(images), code=code)
    model.meta = meta
    cache_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(pt, lambda f: torch.save({k: v.cpu() for k, v in model.state_dict().items()}, f))
    atomic_write_bytes(js, lambda f: f.write(json.dumps(meta, indent=2).encode()))
    return model


def classifier_code() -> dict:
    """The fingerprint of the code that trains the classifier (lib.infra.fingerprint.source_fingerprint): a
    cache made by other code (another learning rate, architecture, schedule) is not reused."""
    from lib.infra.fingerprint import source_fingerprint

    return source_fingerprint(["lib/measure/classifier.py"])


def _cached(pt: Path, js: Path, key: str, code: dict):
    """``(model, None)`` from a cache made by this code for this key, else ``(None, why not)``."""
    try:
        meta = json.loads(js.read_text())
    except FileNotFoundError:
        return None, f"has no {js.name} (an interrupted write)"
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None, f"has an unreadable {js.name} (torn)"
    if not isinstance(meta, dict) or meta.get("key") != key:
        return None, f"was made for another configuration ({meta.get('key') if isinstance(meta, dict) else '?'})"
    if meta.get("code") != code:
        return None, "was made by other classifier code (lib/measure/classifier.py changed)"
    try:
        model = FeatureClassifier(**meta["arch"])
        model.load_state_dict(torch.load(pt, weights_only=True, map_location="cpu"))
    except Exception as e:  # torn or foreign weights: the cache is derived data, so rebuild it
        return None, f"is unreadable or does not fit ({type(e).__name__}; torn?)"
    model.meta = meta
    return model, None


@torch.no_grad()
def features(model: nn.Module, x_model_range: torch.Tensor, batch_size: int = 500) -> np.ndarray:
    """Penultimate features of ``x`` (images in [-1, 1]) as a float64 numpy array [N, D]."""
    model.eval()
    dev = next(model.parameters()).device
    out = [model.features(x_model_range[i:i + batch_size].to(dev, torch.float32)).double().cpu()
           for i in range(0, len(x_model_range), batch_size)]
    return torch.cat(out).numpy()
