"""Paths between two initial noises for notebook 07 (decoded by deterministic DDIM)."""
from __future__ import annotations

import torch


def slerp(a: torch.Tensor, b: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between two noises a, b (any shape, flattened) at the points alpha [K] -> [K, d]:

        slerp(a, b; α) = sin((1−α)θ)/sin θ · a + sin(αθ)/sin θ · b,   cos θ = ⟨a, b⟩/(‖a‖‖b‖)."""
    cos = (a * b).sum() / (a.norm() * b.norm())
    theta = torch.arccos(cos.clamp(-1.0, 1.0))
    w_a, w_b = torch.sin((1 - alpha) * theta) / torch.sin(theta), torch.sin(alpha * theta) / torch.sin(theta)
    return w_a[:, None] * a.flatten()[None] + w_b[:, None] * b.flatten()[None]
