"""Skip-Tuning (Ma et al., ICML 2024, arXiv 2402.15170): training-free scaling of the UNet's skips.

The decoder block that consumes skip k receives concat(h, ρ_k · skip_k) instead of concat(h, skip_k),
with ρ linear in depth from ρ_top at the outermost skip (k = 0, the conv_in output) to ρ_bottom at the
innermost (k = num_skips − 1); "depth" is the skip's index in the encoder's push order. ρ ≡ 1 is the
plain UNet (bit for bit: multiplying by 1.0 is exact).

:class:`SkipTuned` wraps a :class:`lib.unet.UNet` as an ε-model ``(x, t) -> eps``, so it composes with
every sampler. The UNet knows nothing of it: for the duration of each call only, a forward pre-hook on
every decoder block scales the skip part of that block's input ``concat(h, skip_k)`` by ρ_k, and the
hooks are removed afterwards (also on error), so the base model is never left modified.

Caveat (docs/method.md §4): the DDPM UNet applies GroupNorm to the concatenation, which undoes ρ where skip
and decoder channels fall in separate groups; the effect passes mostly through the 1×1 shortcut.
"""
from __future__ import annotations

import math

import torch

__all__ = ["rho_profile", "decoder_blocks", "SkipTuned"]


def rho_profile(num_skips: int, rho_top: float, rho_bottom: float) -> tuple[float, ...]:
    """ρ_k = ρ_top + (ρ_bottom − ρ_top)·k/(num_skips − 1), k = 0 (outermost) … num_skips − 1 (innermost)."""
    if isinstance(num_skips, bool) or not isinstance(num_skips, int) or num_skips < 1:
        raise ValueError(f"num_skips must be a positive integer, got {num_skips!r}")
    for name, v in (("rho_top", rho_top), ("rho_bottom", rho_bottom)):
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
            raise ValueError(f"{name} must be a finite number >= 0 (Skip-Tuning uses values slightly below 1), got {v!r}")
    if num_skips == 1:
        return (float(rho_top),)
    return tuple(float(rho_top) + (float(rho_bottom) - float(rho_top)) * k / (num_skips - 1) for k in range(num_skips))


def decoder_blocks(unet) -> list:
    """The UNet's decoder blocks in the order its forward runs them: block n consumes skip
    ``num_skips − 1 − n`` (the innermost first)."""
    return [block for i in reversed(range(unet.num_resolutions)) for block in unet.up[i].block]


def _scale_skip(rho: float, width: int):
    """A pre-hook of a decoder block: its input ``concat(h, skip)`` becomes ``concat(h, ρ·skip)``."""
    def hook(_module, args):
        x, *rest = args
        c = x.shape[1] - width
        return (torch.cat([x[:, :c], x[:, c:] * rho], dim=1), *rest)
    return hook


class SkipTuned:
    """The ε-model ``unet`` with Skip-Tuning factors ρ linear in depth (see :func:`rho_profile`)."""

    def __init__(self, unet, rho_top: float = 1.0, rho_bottom: float = 1.0):
        if not hasattr(unet, "skip_channels") or not hasattr(unet, "up"):
            raise TypeError(f"Skip-Tuning needs a UNet with skip connections (lib.unet.UNet); "
                            f"got {type(unet).__name__}. The 2-D toy MLP has no skips.")
        self.unet, self.rho_top, self.rho_bottom = unet, float(rho_top), float(rho_bottom)
        self.rho = rho_profile(unet.num_skips, rho_top, rho_bottom)

    @property
    def label(self) -> str:
        return f"skiptune({self.rho_top:g},{self.rho_bottom:g})"

    def __call__(self, x: torch.Tensor, t) -> torch.Tensor:
        k_last = self.unet.num_skips - 1
        handles = [block.register_forward_pre_hook(_scale_skip(self.rho[k_last - n], self.unet.skip_channels[k_last - n]))
                   for n, block in enumerate(decoder_blocks(self.unet))]
        try:
            return self.unet(x, t)
        finally:
            for h in handles:
                h.remove()

    def __repr__(self) -> str:
        return f"SkipTuned({type(self.unet).__name__}, rho_top={self.rho_top:g}, rho_bottom={self.rho_bottom:g})"
