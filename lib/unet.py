"""The DDPM UNet ε-network, architecture as in the DDIM reference code (docs/method.md §1).

ε_θ(x_t, t): sinusoidal embedding of t -> temb MLP (ch -> 4ch -> 4ch, swish); conv_in; an encoder of
``num_res_blocks`` ResnetBlocks per level (self-attention at ``attn_resolutions``) with a downsample
between levels; a middle (res, attn, res); a decoder of ``num_res_blocks + 1`` ResnetBlocks per level,
each fed ``concat(h, skip)``; norm_out, swish, conv_out.

Module names follow the reference code (``temb.dense``, ``down[i].block[j]``, ``mid.attn_1``, ...),
so a state dict saved by it loads here unchanged. The CIFAR-10 configuration has 35,746,307
parameters, the CelebA-64 one (ch_mult (1,2,2,2,4)) 78,700,803.

``skip_channels[k]`` is the width of skip k in push order (k = 0 the conv_in output, the outermost;
k = ``num_skips`` − 1 the innermost); the decoder consumes them innermost first.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of DDPM/DDIM: ``[sin(t ω_i), cos(t ω_i)]``, ω_i = exp(-i ln(10⁴)/(half-1)).

    ``t`` is a 1-D float (fractional allowed) or int tensor ``[N]``; returns ``[N, dim]``, computed
    in float64 when ``t`` is float64 and in float32 otherwise (as the reference code does).
    An odd ``dim`` is zero-padded by one column.
    """
    if t.ndim != 1:
        raise ValueError(f"timestep_embedding expects a 1-D tensor of times [N], got shape {tuple(t.shape)}")
    half = dim // 2
    if half < 2:
        raise ValueError(f"timestep_embedding needs dim >= 4 (the frequencies divide by half-1), got {dim}")
    dtype = torch.float64 if t.dtype == torch.float64 else torch.float32
    omega = torch.exp(torch.arange(half, dtype=dtype, device=t.device) * (-math.log(10000.0) / (half - 1)))
    arg = t.to(dtype)[:, None] * omega[None, :]
    emb = torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)
    if dim % 2 == 1:
        emb = F.pad(emb, (0, 1))
    return emb


def as_time(t, n: int, device) -> torch.Tensor:
    """Times as a 1-D tensor ``[n]`` on ``device``: a Python number or 0-d tensor is broadcast."""
    if not torch.is_tensor(t):
        return torch.full((n,), float(t), device=device)
    if t.ndim == 0:
        t = t.expand(n)
    if t.ndim != 1 or t.shape[0] != n:
        raise ValueError(f"t must be a scalar or a 1-D tensor of length N={n} (one time per sample), "
                         f"got shape {tuple(t.shape)}")
    return t.to(device)


def num_groups(channels: int) -> int:
    """GroupNorm groups: the largest divisor of C that is at most 32 and leaves >= 4 channels per group.

    Every C of the paper's models (128..768) gets exactly DDPM's 32 groups. Small test models need the
    floor of 4 channels per group: with one channel per group GroupNorm subtracts each channel's
    spatial mean, which erases the per-channel temb shift added just before norm2 and leaves the
    network blind to t (e.g. ch=16 would otherwise get 16 groups of 1).
    """
    return max([g for g in range(1, min(32, channels // 4) + 1) if channels % g == 0], default=1)


def Normalize(channels: int, groups: int | None = None) -> nn.GroupNorm:
    """GroupNorm(eps 1e-6) with ``groups`` groups, or :func:`num_groups` of C when ``groups`` is None."""
    g = num_groups(channels) if groups is None else groups
    if channels % g:
        raise ValueError(f"GroupNorm with {g} groups needs a channel count divisible by {g}, got {channels}; "
                         "use norm_groups=None (this project's rule) or widths that are multiples of it")
    return nn.GroupNorm(g, channels, eps=1e-6, affine=True)


def _like(h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    # keep the memory layout of the input, so an NCHW model stays NCHW and channels_last stays so
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return h.contiguous(memory_format=torch.channels_last)
    return h.contiguous()


class Upsample(nn.Module):
    """Nearest-neighbour ×2, then a 3×3 conv if ``with_conv``."""

    def __init__(self, channels: int, with_conv: bool):
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = nn.Conv2d(channels, channels, 3, stride=1, padding=1)

    def forward(self, x):
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if self.with_conv else x


class Downsample(nn.Module):
    """A 3×3 stride-2 conv after padding right/bottom by one (TensorFlow 'SAME' for stride 2, as in
    DDPM), or a 2×2 average pool when ``with_conv`` is False."""

    def __init__(self, channels: int, with_conv: bool):
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x):
        if self.with_conv:
            return self.conv(F.pad(x, (0, 1, 0, 1)))
        return F.avg_pool2d(x, kernel_size=2, stride=2)


class ResnetBlock(nn.Module):
    """x + conv2(drop(swish(GN(conv1(swish(GN(x))) + W·swish(temb))))); a 1×1 shortcut if C changes."""

    def __init__(self, *, in_channels: int, out_channels: int, temb_channels: int, dropout: float,
                 norm_groups: int | None = None):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.norm1 = Normalize(in_channels, norm_groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=1, padding=1)
        self.temb_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = Normalize(out_channels, norm_groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=1, padding=0)

    def forward(self, x, temb):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        if self.in_channels != self.out_channels:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention: x + proj_out(softmax(q kᵀ/√C) v), q,k,v 1×1 convs of GN(x).

    Computed with ``scaled_dot_product_attention`` (default scale 1/√C), which is the same map as the
    reference code's explicit bmm-softmax-bmm but uses fused kernels where available.
    """

    def __init__(self, channels: int, norm_groups: int | None = None):
        super().__init__()
        self.norm = Normalize(channels, norm_groups)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        b, c, hh, ww = x.shape
        h = self.norm(x)
        # [B, C, H, W] -> [B, 1 head, HW tokens, C]: a view when x is channels_last, a copy otherwise
        q, k, v = (m(h).permute(0, 2, 3, 1).reshape(b, 1, hh * ww, c) for m in (self.q, self.k, self.v))
        a = F.scaled_dot_product_attention(q, k, v)
        a = _like(a.reshape(b, hh, ww, c).permute(0, 3, 1, 2), x)
        return x + self.proj_out(a)


class UNet(nn.Module):
    """The DDPM/DDIM ε-network ``forward(x, t) -> eps`` (x ``[N,C,H,W]``, t ``[N]`` on the 0..T-1 scale).

    ``norm_groups``: None gives every GroupNorm :func:`num_groups` of its width (32 for all released
    widths); an integer fixes the group count, e.g. 32 as the reference code always uses, which
    :mod:`lib.pretrained` sets when it loads a reference checkpoint (the count is not in the weights)."""

    def __init__(self, *, in_channels: int, out_ch: int, resolution: int, ch: int, ch_mult, num_res_blocks: int,
                 attn_resolutions, dropout: float, resamp_with_conv: bool = True, norm_groups: int | None = None):
        super().__init__()
        if norm_groups is not None and (isinstance(norm_groups, bool) or not isinstance(norm_groups, int)
                                        or norm_groups < 1):
            raise ValueError(f"norm_groups must be None or a positive integer, got {norm_groups!r}")
        self.norm_groups = norm_groups
        G = norm_groups
        ch_mult = tuple(int(m) for m in ch_mult)
        attn_resolutions = tuple(int(r) for r in attn_resolutions)
        L = len(ch_mult)
        if L < 1 or num_res_blocks < 1 or ch < 1:
            raise ValueError("UNet needs ch >= 1, a non-empty ch_mult and num_res_blocks >= 1")
        if resolution % 2 ** (L - 1) != 0:
            raise ValueError(f"resolution {resolution} must be divisible by 2^(len(ch_mult)-1) = {2 ** (L - 1)} "
                             "(one halving per level); change model.resolution or model.ch_mult")
        level_res = [resolution // 2 ** i for i in range(L)]
        bad = [r for r in attn_resolutions if r not in level_res]
        if bad:
            raise ValueError(f"attn_resolutions {bad} are not resolutions of any level; with resolution "
                             f"{resolution} and {L} levels the valid ones are {level_res}")
        self.ch, self.temb_ch = ch, 4 * ch
        self.num_resolutions, self.num_res_blocks = L, num_res_blocks
        self.resolution, self.in_channels, self.out_ch = resolution, in_channels, out_ch

        # timestep embedding MLP: ch -> 4ch -> 4ch
        self.temb = nn.Module()
        self.temb.dense = nn.ModuleList([nn.Linear(ch, self.temb_ch), nn.Linear(self.temb_ch, self.temb_ch)])

        self.conv_in = nn.Conv2d(in_channels, ch, 3, stride=1, padding=1)

        # encoder; skip_chs records the channels of every tensor pushed for the decoder
        in_ch_mult = (1,) + ch_mult
        skip_chs = [ch]
        self.down = nn.ModuleList()
        block_in = ch
        for i in range(L):
            level = nn.Module()
            level.block, level.attn = nn.ModuleList(), nn.ModuleList()
            block_in, block_out = ch * in_ch_mult[i], ch * ch_mult[i]
            for _ in range(num_res_blocks):
                level.block.append(ResnetBlock(in_channels=block_in, out_channels=block_out,
                                               temb_channels=self.temb_ch, dropout=dropout, norm_groups=G))
                block_in = block_out
                if level_res[i] in attn_resolutions:
                    level.attn.append(AttnBlock(block_in, G))
                skip_chs.append(block_in)
            if i != L - 1:
                level.downsample = Downsample(block_in, resamp_with_conv)
                skip_chs.append(block_in)
            self.down.append(level)

        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(in_channels=block_in, out_channels=block_in, temb_channels=self.temb_ch,
                                       dropout=dropout, norm_groups=G)
        self.mid.attn_1 = AttnBlock(block_in, G)
        self.mid.block_2 = ResnetBlock(in_channels=block_in, out_channels=block_in, temb_channels=self.temb_ch,
                                       dropout=dropout, norm_groups=G)

        # decoder: num_res_blocks + 1 blocks per level, each consuming one skip (innermost first)
        self.skip_channels, self.num_skips = tuple(skip_chs), len(skip_chs)
        pending = list(skip_chs)
        up = []
        for i in reversed(range(L)):
            level = nn.Module()
            level.block, level.attn = nn.ModuleList(), nn.ModuleList()
            block_out = ch * ch_mult[i]
            for _ in range(num_res_blocks + 1):
                level.block.append(ResnetBlock(in_channels=block_in + pending.pop(), out_channels=block_out,
                                               temb_channels=self.temb_ch, dropout=dropout, norm_groups=G))
                block_in = block_out
                if level_res[i] in attn_resolutions:
                    level.attn.append(AttnBlock(block_in, G))
            if i != 0:
                level.upsample = Upsample(block_in, resamp_with_conv)
            up.insert(0, level)  # index by level, as the reference code does
        assert not pending, "every encoder skip must be consumed by the decoder"
        self.up = nn.ModuleList(up)

        self.norm_out = Normalize(block_in, G)
        self.conv_out = nn.Conv2d(block_in, out_ch, 3, stride=1, padding=1)

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        t = as_time(t, x.shape[0], x.device)
        temb = self.temb.dense[1](F.silu(self.temb.dense[0](timestep_embedding(t, self.ch))))

        hs = [self.conv_in(x)]
        for i, level in enumerate(self.down):
            for j, block in enumerate(level.block):
                h = block(hs[-1], temb)
                if len(level.attn) > 0:
                    h = level.attn[j](h)
                hs.append(h)
            if i != self.num_resolutions - 1:
                hs.append(level.downsample(hs[-1]))

        h = hs[-1]
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h, temb)), temb)

        for i in reversed(range(self.num_resolutions)):
            level = self.up[i]
            for j, block in enumerate(level.block):
                h = block(torch.cat([h, hs.pop()], dim=1), temb)
                if len(level.attn) > 0:
                    h = level.attn[j](h)
            if i != 0:
                h = level.upsample(h)

        return self.conv_out(F.silu(self.norm_out(h)))


def build_unet(model_cfg, norm_groups: int | None = None) -> UNet:
    """The UNet of a ``lib.infra.config.ModelConfig`` (kind 'unet'); ``norm_groups`` as in :class:`UNet`,
    by default the config's ``model.norm_groups`` (0: the width rule, :func:`num_groups`)."""
    kind = getattr(model_cfg, "kind", "unet")
    if kind != "unet":
        raise ValueError(f"build_unet got model.kind={kind!r}; use lib.mlp.build_mlp for 'mlp'")
    return UNet(in_channels=model_cfg.in_channels, out_ch=model_cfg.out_ch, resolution=model_cfg.resolution,
                ch=model_cfg.ch, ch_mult=model_cfg.ch_mult, num_res_blocks=model_cfg.num_res_blocks,
                attn_resolutions=model_cfg.attn_resolutions, dropout=model_cfg.dropout,
                resamp_with_conv=model_cfg.resamp_with_conv,
                norm_groups=norm_groups if norm_groups is not None else getattr(model_cfg, "norm_groups", 0) or None)
