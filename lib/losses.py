"""Training losses: DDPM's L_0, S²-DM's τL_0 + (1-τ)L_skip (docs/method.md §1) and DDPM-IP's input
perturbation (docs/method.md §1b).

Every loss returns a **per-sample** loss ``[N]`` (the mean over that sample's pixels); the batch
reduction lives in the training loop. Explicit ``t`` and noise tensors make each loss
deterministic for tests and notebooks; when omitted they are drawn from ``generator``.
"""
from __future__ import annotations

import torch

from lib.schedule import Schedule


def sample_t(n: int, T: int, *, generator=None, device="cpu") -> torch.Tensor:
    """Antithetic uniform times of the DDIM code: draw n//2+1 times t, append T-1-t, keep n.

    Pairs (t, T-1-t) lower the variance of the batch loss across noise levels."""
    t = torch.randint(0, T, (n // 2 + 1,), generator=generator, device=device)
    return torch.cat([t, T - 1 - t])[:n].to(torch.float32)


def _draw(like: torch.Tensor, generator) -> torch.Tensor:
    return torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)


def _per_sample_mean(x: torch.Tensor) -> torch.Tensor:
    return x.float().pow(2).flatten(1).mean(1)


def ddpm_loss(eps_model, x0, schedule: Schedule, *, t=None, noise=None, generator=None) -> torch.Tensor:
    """L_0 = ‖ε − ε_θ(x_t, t)‖² (mean over pixels), x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε  (DDPM eq. 14)."""
    if t is None:
        t = sample_t(len(x0), schedule.T, generator=generator, device=x0.device)
    if noise is None:
        noise = _draw(x0, generator)
    eps = eps_model(schedule.q_sample(x0, t, noise), t)
    return _per_sample_mean(noise - eps)


def s2dm_loss(eps_model, x0, schedule: Schedule, *, skip: int = 9, tau: float = 0.99, t=None, noise=None,
              noise_skip=None, same_noise: bool = False, generator=None, parts: dict | None = None) -> torch.Tensor:
    """S²-DM loss L = τ L_0 + (1−τ) L_skip with L_skip = ‖ε′ − c_t ε_θ(x_t, t)‖², c_t = √((1−α_skip)/α_skip).

    As in the official code: ε′ is a fresh normal draw **independent** of ε (``same_noise=True``
    is the literal-notation ablation ε′ = ε), one network evaluation serves both terms, and samples
    with t < skip use plain L_0 with weight 1. With τ = 1 this equals :func:`ddpm_loss` exactly
    (the baseline arm trains through this same function, so both arms consume the same random
    numbers). ``parts``, if given, receives the per-sample ``l0`` and ``lskip`` (detached).
    """
    if not 0.0 <= tau <= 1.0:
        raise ValueError(f"tau must lie in [0, 1], got {tau}")
    if not 1 <= skip < schedule.T:
        raise ValueError(f"skip must satisfy 1 <= skip < T={schedule.T}, got {skip}")
    if t is None:
        t = sample_t(len(x0), schedule.T, generator=generator, device=x0.device)
    if noise is None:
        noise = _draw(x0, generator)
    if noise_skip is None:
        # Drawn even when unused (same_noise, τ = 1) so every arm sees the same random stream.
        noise_skip = _draw(x0, generator)
    if same_noise:
        noise_skip = noise
    eps = eps_model(schedule.q_sample(x0, t, noise), t)
    c = schedule.c_t(t.detach().to(torch.float64), skip, check=False).to(torch.float32)
    c = c.view(-1, *([1] * (x0.ndim - 1)))
    l0 = _per_sample_mean(noise - eps)
    lskip = _per_sample_mean(noise_skip - c * eps.float())
    loss = torch.where(t < skip, l0, tau * l0 + (1.0 - tau) * lskip)
    if parts is not None:
        parts["l0"], parts["lskip"] = l0.detach(), lskip.detach()
    return loss


def ip_loss(eps_model, x0, schedule: Schedule, *, gamma: float = 0.1, t=None, noise=None, xi=None,
            generator=None, parts: dict | None = None) -> torch.Tensor:
    """DDPM-IP (Ning et al. 2023, eq. 9): L = ‖ε − ε_θ(√ᾱ_t x_0 + √(1−ᾱ_t)(ε + γξ), t)‖², ξ ~ N(0, I).

    The input is built from the perturbed noise ε + γξ while the target stays ε. ξ is drawn at every γ, in
    the slot where :func:`s2dm_loss` draws ε′, so γ = 0 consumes the baseline's random stream and gives its
    loss (and weights) bit for bit."""
    if isinstance(gamma, bool) or not gamma >= 0.0:
        raise ValueError(f"gamma must be a number >= 0, got {gamma!r}")
    if t is None:
        t = sample_t(len(x0), schedule.T, generator=generator, device=x0.device)
    if noise is None:
        noise = _draw(x0, generator)
    if xi is None:
        xi = _draw(x0, generator)  # drawn even at γ = 0: the same stream as the baseline's ε′
    eps = eps_model(schedule.q_sample(x0, t, noise + gamma * xi), t)
    l0 = _per_sample_mean(noise - eps)
    if parts is not None:
        parts["l0"], parts["lskip"] = l0.detach(), torch.zeros_like(l0)
    return l0
