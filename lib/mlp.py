"""The 2-D toy ε-network: a SiLU MLP conditioned on t at every hidden layer.

ε_θ(x_t, t) with x ``[N, dim]`` and t ``[N]`` on the 0..T-1 scale (fractional allowed). The time
enters as in the UNet: the DDPM sinusoidal embedding, a two-layer SiLU MLP, and a per-layer linear
projection added to each hidden pre-activation.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from lib.unet import as_time, timestep_embedding


class ToyMLP(nn.Module):
    """h_0 = x; h_{i+1} = SiLU(W_i h_i + b_i + P_i SiLU(temb)) for i < depth; ε = W_out h_depth."""

    def __init__(self, dim: int = 2, hidden: int = 128, depth: int = 3, temb_dim: int = 64):
        super().__init__()
        if dim < 1 or hidden < 1 or depth < 1 or temb_dim < 4:
            raise ValueError(f"ToyMLP needs dim >= 1, hidden >= 1, depth >= 1, temb_dim >= 4; got dim={dim}, "
                             f"hidden={hidden}, depth={depth}, temb_dim={temb_dim}")
        self.dim, self.temb_dim = dim, temb_dim
        self.temb = nn.Sequential(nn.Linear(temb_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.layers = nn.ModuleList([nn.Linear(dim if i == 0 else hidden, hidden) for i in range(depth)])
        self.temb_proj = nn.ModuleList([nn.Linear(hidden, hidden) for _ in range(depth)])
        self.out = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"ToyMLP expects x of shape [N, {self.dim}], got {tuple(x.shape)}")
        t = as_time(t, x.shape[0], x.device)
        temb = F.silu(self.temb(timestep_embedding(t, self.temb_dim)))
        h = x
        for layer, proj in zip(self.layers, self.temb_proj):
            h = F.silu(layer(h) + proj(temb))
        return self.out(h)


def build_mlp(model_cfg) -> ToyMLP:
    """The toy MLP from any config with ``hidden`` and ``depth`` (a ModelConfig or the ToyConfig)."""
    return ToyMLP(dim=2, hidden=model_cfg.hidden, depth=model_cfg.depth)
