"""diffusers' ``UNet2DModel`` built as the project's DDPM UNet: the reference the speed benchmarks race.

For the paper config this is the google/ddpm-cifar10-32 layout (block_out_channels 128/256/256/256,
DownBlock2D, AttnDownBlock2D, DownBlock2D, DownBlock2D and the mirrored up blocks, two layers per
block, one attention head of width C, DDPM's sinusoid with freq_shift 1 and sin first, GroupNorm
eps 1e-6 with 32 groups, TF-'SAME' downsampling). diffusers is optional: :func:`available` says
whether it can be imported, and why not.
"""
from __future__ import annotations

import torch

from lib.unet import num_groups

__all__ = ["available", "diffusers_kwargs", "DiffusersEps"]


def available() -> tuple[bool, str]:
    """(importable, version or the reason it is not)."""
    try:
        import diffusers
    except Exception as e:  # ImportError, or a broken install raising something else
        return False, f"diffusers not importable ({type(e).__name__}: {e}); bring its wheel (docs/GPU.md)"
    return True, diffusers.__version__


def diffusers_kwargs(m) -> dict:
    """``UNet2DModel`` arguments that build the DDPM UNet of ``ModelConfig`` m: one (Attn)DownBlock2D
    per level, attention where the level's resolution is in attn_resolutions, one head of width C,
    DDPM's sinusoid (sin first, denominator half-1), GroupNorm eps 1e-6, TF-'SAME' downsampling
    (pad right/bottom), nearest + conv upsampling."""
    chans = [m.ch * k for k in m.ch_mult]
    res = [m.resolution // 2 ** i for i in range(len(m.ch_mult))]
    attn = [r in tuple(m.attn_resolutions) for r in res]
    # UNet2DModel has one group count for every norm; ours picks it per width (lib.unet.num_groups),
    # which gives 32 everywhere for the paper's widths.
    groups = min(num_groups(c) for c in chans)
    return dict(sample_size=m.resolution, in_channels=m.in_channels, out_channels=m.out_ch,
                block_out_channels=tuple(chans), layers_per_block=m.num_res_blocks,
                down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
                up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
                attention_head_dim=None, norm_num_groups=groups, norm_eps=1e-6, dropout=m.dropout,
                downsample_padding=0, flip_sin_to_cos=False, freq_shift=1, act_fn="silu",
                mid_block_scale_factor=1, time_embedding_type="positional", add_attention=True)


class DiffusersEps(torch.nn.Module):
    """``UNet2DModel`` behind the project's ε-model contract ``eps_model(x, t) -> eps``."""

    def __init__(self, **kwargs):
        super().__init__()
        from diffusers import UNet2DModel

        self.unet = UNet2DModel(**kwargs)

    def forward(self, x, t):
        return self.unet(x, t, return_dict=False)[0]
