"""Datasets: 2-D toy distributions with a known density, and the training batches of every dataset.

Toy data (``TOY_DATASETS``) are *sampled* from an exact Gaussian mixture (:class:`GMM`), so every
toy metric can be computed against the true density. They are used as they are, without
rescaling: their coordinates lie in about [-2.3, 2.3], the same order as image data in [-1, 1]
(per-coordinate variance ≈ 2 instead of ≤ 1), which the linear-β schedule with T = 1000 still
takes to pure noise (√ᾱ_{T-1} · 2.3 ≈ 0.015).

Image data (``IMAGE_DATASETS``) are *loaded* from their files by lib.readers (``load_images``: uint8
tensors ``[N, C, H, W]`` plus int64 labels or None). The training loop draws its batches from
:class:`BatchSource`, which turns the stored images into a batch with :func:`training_batch`: into the
model's range by :func:`to_model_range` (x/127.5 − 1, as the DDIM code's ``2x − 1`` on x/255), then a
random horizontal flip (``data.random_flip``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lib.infra.config import TOY_DATASETS, ConfigError  # the dataset names are part of the config schema
from lib.readers import DatasetMissing, load_images

__all__ = ["GMM", "toy_distribution", "to_model_range", "from_model_range", "flip_where", "random_flip",
           "training_batch", "BatchSource", "DatasetMissing", "load_images"]


# ============================================================================ toy distributions
@dataclass(frozen=True, eq=False)
class GMM:
    """An isotropic Gaussian mixture p(x) = Σ_k w_k N(x; μ_k, std² I) with exact moments.

    ``means`` [K, d] and ``weights`` [K] are float64 tensors (weights are normalised to sum 1)."""

    means: torch.Tensor
    std: float
    weights: torch.Tensor

    def __post_init__(self):
        m = torch.as_tensor(self.means, dtype=torch.float64)
        w = torch.as_tensor(self.weights, dtype=torch.float64)
        if m.ndim != 2 or w.shape != (m.shape[0],):
            raise ValueError(f"GMM needs means [K, d] and weights [K]; got {tuple(m.shape)} and {tuple(w.shape)}")
        if not (self.std > 0) or bool((w < 0).any()) or float(w.sum()) <= 0:
            raise ValueError("GMM needs std > 0 and non-negative weights with a positive sum")
        object.__setattr__(self, "means", m)
        object.__setattr__(self, "weights", w / w.sum())
        object.__setattr__(self, "std", float(self.std))

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def n_modes(self) -> int:
        return self.means.shape[0]

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n draws as float32 [n, d]: a component k ~ w, then μ_k + std·ε."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        eps = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return (self.means[k] + self.std * eps).float()

    def log_prob(self, x) -> torch.Tensor:
        """log p(x) in float64, [n], by log-sum-exp over the components."""
        x = torch.as_tensor(x).to(dtype=torch.float64, device="cpu")
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"log_prob expects points [n, {self.dim}], got {tuple(x.shape)}")
        d2 = torch.cdist(x, self.means).square()  # [n, K]
        log_norm = -0.5 * self.dim * np.log(2 * np.pi * self.std**2)
        return torch.logsumexp(torch.log(self.weights) + log_norm - 0.5 * d2 / self.std**2, dim=1)

    def mean(self) -> torch.Tensor:
        """E[x] = Σ_k w_k μ_k (float64 [d])."""
        return self.weights @ self.means

    def cov(self) -> torch.Tensor:
        """Cov[x] = Σ_k w_k μ_k μ_kᵀ − E[x]E[x]ᵀ + std² I (float64 [d, d]): law of total variance."""
        m = self.mean()
        second = (self.means * self.weights[:, None]).T @ self.means
        return second - torch.outer(m, m) + self.std**2 * torch.eye(self.dim, dtype=torch.float64)


def toy_distribution(name: str) -> GMM:
    """The named 2-D toy distribution (equal weights, std 0.1 per mode).

    * ``ring8``: 8 modes evenly spaced on the circle of radius 2 (neighbours 1.53 apart, ≈15 std).
    * ``grid25``: 25 modes on the 5×5 grid {-2, -1, 0, 1, 2}² (neighbours 1 apart, 10 std).
    Both have mean 0 and per-coordinate variance 2.01.
    """
    std = 0.1
    if name == "ring8":
        angle = torch.arange(8, dtype=torch.float64) * (2 * np.pi / 8)
        means = 2.0 * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    elif name == "grid25":
        g = torch.arange(-2, 3, dtype=torch.float64)
        means = torch.cartesian_prod(g, g)
    else:
        raise ValueError(f"unknown toy distribution {name!r}; valid: {', '.join(TOY_DATASETS)}")
    return GMM(means=means, std=std, weights=torch.ones(len(means), dtype=torch.float64))


# ============================================================================ image range helpers
def to_model_range(x_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1] as x/127.5 − 1."""
    if x_uint8.dtype != torch.uint8:
        raise TypeError(f"to_model_range expects a uint8 tensor, got {x_uint8.dtype}")
    return x_uint8.float() / 127.5 - 1.0


def from_model_range(x: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8: (x + 1)·127.5, clamped to [0, 255] and rounded (inverse of to_model_range)."""
    return ((x.float() + 1.0) * 127.5).clamp(0, 255).round().to(torch.uint8)


def flip_where(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x`` [N, ...] with sample i mirrored horizontally (last axis) where ``mask[i]`` (new tensor)."""
    return torch.where(mask.to(x.device).view(-1, *([1] * (x.ndim - 1))), x.flip(-1), x)


def random_flip(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flip each sample of ``x`` [N, C, H, W] horizontally with probability 1/2 (new tensor).

    The coin flips are drawn on the generator's device (CPU by default), so the result depends
    only on the generator's state, whatever the device of ``x``."""
    gen_device = generator.device if generator is not None else torch.device("cpu")
    return flip_where(x, torch.rand(x.shape[0], generator=generator, device=gen_device) < 0.5)


def training_batch(images_uint8: torch.Tensor, flip: torch.Tensor | None = None) -> torch.Tensor:
    """The one path from stored images to a training batch: uint8 → [-1, 1] (:func:`to_model_range`),
    then each image mirrored where the boolean ``flip`` mask says (none when ``flip`` is None)."""
    x = to_model_range(images_uint8)
    return x if flip is None else flip_where(x, flip)


# ============================================================================ training batches
class BatchSource:
    """Mini-batches with a resumable order: epoch permutations of an image set, or fresh toy samples.

    All randomness comes from ``generator`` (CPU) so its state, with the epoch permutation and the
    position in it, restores the data order exactly. Under DDP every rank draws the same global
    permutation and flip mask and keeps its own slice."""

    def __init__(self, data_cfg, device, generator: torch.Generator, rank: int = 0, world: int = 1,
                 batch_size: int = 0):
        self.flip, self.device, self.g, self.rank, self.world = data_cfg.random_flip, device, generator, rank, world
        self.toy = data_cfg.dataset in TOY_DATASETS
        if self.toy:
            self.gmm = toy_distribution(data_cfg.dataset)
        else:
            images, _ = load_images(data_cfg)
            if batch_size > len(images):  # would be capped silently (and images/s overstated)
                raise ConfigError(f"train.batch_size={batch_size} exceeds the {len(images)} images loaded from "
                                  f"{data_cfg.dataset}: lower train.batch_size")
            self.images = images.to(device)  # uint8 on the device: no loader workers, no host copies
            self.perm, self.pos = self._new_perm(), 0

    def _new_perm(self):
        return torch.randperm(len(self.images), generator=self.g)

    def next(self, global_batch: int) -> torch.Tensor:
        lb = global_batch // self.world
        if self.toy:
            x = self.gmm.sample(global_batch, generator=self.g)
            return x[self.rank * lb:(self.rank + 1) * lb].to(self.device)
        if self.pos + global_batch > len(self.perm):  # drop the ragged end of an epoch
            self.perm, self.pos = self._new_perm(), 0
        idx = self.perm[self.pos:self.pos + global_batch]
        self.pos += global_batch
        flip = torch.rand(global_batch, generator=self.g) < 0.5
        idx, flip = idx[self.rank * lb:(self.rank + 1) * lb], flip[self.rank * lb:(self.rank + 1) * lb]
        return training_batch(self.images[idx.to(self.device)], flip if self.flip else None)

    def state_dict(self) -> dict:
        s = {"generator": self.g.get_state()}
        if not self.toy:
            s.update(perm=self.perm, pos=self.pos)
        return s

    def load_state_dict(self, s: dict):
        self.g.set_state(s["generator"])
        if not self.toy:
            self.perm, self.pos = s["perm"], int(s["pos"])


