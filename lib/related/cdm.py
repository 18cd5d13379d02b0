"""Consistent Diffusion Models (Daras et al., NeurIPS 2023, arXiv 2302.09057), ported to the discrete-time
ε-model: the training arm ``cdm`` of lib.train.

    L = L_DSM + λ · c(σ) · ⟨h(x′₁, t′) − h(x_t, t), h(x′₂, t′) − h(x_t, t)⟩            (per sample)

* L_DSM = ‖ε − ε_θ(x_t, t)‖² (mean over pixels), x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε: the baseline's loss, with
  its antithetic integer t.
* h(x, t) = (x − √(1−ᾱ_t) ε_θ(x, t))/√ᾱ_t, the model's x̂_0 prediction (EDM's denoiser D).
* x′₁, x′₂: two independent runs, **without gradient**, of the model's own reverse SDE from x_t at
  σ = σ(t) down to σ′ = max(σ − U[0, Δσ], σ(0)), as ``steps`` Euler–Maruyama steps on an EDM ρ = 7 grid
  (the released code's sampler): in y = x/√ᾱ, y ← y + 2(σ_{k+1} − σ_k) ε̂ + √(2σ_k(σ_k − σ_{k+1})) ξ.
  t′ = schedule.t_from_sigma(σ′) is fractional; the floor σ(0) = 0.01 is the smallest noise level the
  network was trained at (EDM's floor 0.002 is its own σ_min).
* The inner product of two independent chains is an unbiased estimate of ‖E[h(x′, t′)] − h(x_t, t)‖²;
  gradients flow through the three h evaluations (one batched forward pass), never through the chains.

**Decisions of the port** (the paper works with EDM's σ-parametrised denoiser and lognormal σ):

* Δσ is absolute, in the units of σ, as in the paper: our data are in [−1, 1] like EDM's, so σ means
  the same. Our t is uniform, so σ(t) spans 0.01 … 157; above σ ≈ 3 (t ≳ 500) a decrement of 0.05 is
  a fraction of one discrete step and the term is ≈ 0 there; it acts at t ≲ 200, where few-step
  samplers take their last steps.
* c(σ) = σ_d²/(σ² + σ_d²), σ_d = 0.5 (``weighting="edm"``, the default): EDM weights its denoising loss
  by (σ² + σ_d²)/(σσ_d)² and leaves the consistency term unweighted; our L_DSM in ε equals ‖x̂_0 − x_0‖²/σ².
  Multiplying the consistency term by c(σ) keeps the *ratio* of the two terms exactly as in Daras et
  al. at every σ, so λ = 10 means what it means there. Without it (``weighting="none"``) the x̂_0-space
  term would weigh σ² times more than the DSM term at large σ, where x̂_0 = y − σε̂ amplifies ε errors
  by σ ≤ 157 (EDM rarely samples σ > 5).

Cost: one forward for L_DSM widened to 3N samples, plus 2N × ``steps`` no-grad evaluations (about 6×
the FLOPs of plain training at 5 steps, as the paper says). λ = 0 skips the chains and returns the
DDPM loss exactly.
"""
from __future__ import annotations

import torch

from lib.losses import sample_t
from lib.schedule import Schedule

__all__ = ["SIGMA_DATA", "WEIGHTINGS", "cdm_loss", "reverse_sde_chains", "make_cdm_loss", "x0_prediction"]

SIGMA_DATA = 0.5  # EDM's σ_data, the scale of the weighting c(σ)
WEIGHTINGS = ("edm", "none")


def _col(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-sample float64 vector as a [N, 1, ...] column in ``like``'s dtype."""
    return v.to(device=like.device, dtype=like.dtype).view(-1, *([1] * (like.ndim - 1)))


def x0_prediction(x: torch.Tensor, eps: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    """h = (x − √(1−ᾱ) ε)/√ᾱ with a per-sample ᾱ (float64 [N])."""
    return (x - _col((1 - ab).sqrt(), x) * eps) / _col(ab.sqrt(), x)


def _edm_grid(sigma: torch.Tensor, sigma_end: torch.Tensor, steps: int, rho: float = 7.0) -> torch.Tensor:
    """[N, steps + 1] EDM-spaced noise levels from ``sigma`` down to ``sigma_end`` (per sample, float64)."""
    i = torch.arange(steps + 1, dtype=torch.float64, device=sigma.device) / steps
    a, b = sigma[:, None] ** (1 / rho), sigma_end[:, None] ** (1 / rho)
    grid = (a + i[None, :] * (b - a)) ** rho
    grid[:, 0], grid[:, -1] = sigma, sigma_end
    return grid


@torch.no_grad()
def reverse_sde_chains(eps_model, x_t: torch.Tensor, t: torch.Tensor, t_end: torch.Tensor, schedule: Schedule,
                       steps: int, generator=None) -> torch.Tensor:
    """Euler–Maruyama on the reverse SDE from t down to t_end (per sample), no gradient; returns x at t_end.

    In y = x/√ᾱ (the VE process y = x_0 + σ ε) with d = (y − D)/σ = ε̂, each step is
    y ← y + 2(σ_{k+1} − σ_k) ε̂ + √(2σ_k(σ_k − σ_{k+1})) ξ (Daras et al.'s sampler) on an EDM ρ = 7 grid
    of ``steps`` intervals from σ(t) to σ(t_end); t_end = t is a no-op."""
    t, t_end = t.detach().to(torch.float64).cpu(), t_end.detach().to(torch.float64).cpu()
    grid = _edm_grid(schedule.sigma(t), schedule.sigma(t_end), steps)  # [N, steps+1] σ values
    t_grid = schedule.t_from_sigma(grid).clamp(min=0.0)
    t_grid[:, 0], t_grid[:, -1] = t, t_end  # the endpoints exactly
    ab = schedule.alpha_bar(t_grid, check=False)
    tdtype = torch.float64 if x_t.dtype == torch.float64 else torch.float32
    y = x_t / _col(ab[:, 0].sqrt(), x_t)
    for k in range(steps):
        s, s_next = grid[:, k], grid[:, k + 1]
        eps = eps_model(y * _col(ab[:, k].sqrt(), y), t_grid[:, k].to(device=y.device, dtype=tdtype)).to(y.dtype)
        xi = torch.randn(y.shape, generator=generator, device=y.device, dtype=y.dtype)
        y = y + _col(2 * (s_next - s), y) * eps + _col((2 * s * (s - s_next)).clamp(min=0).sqrt(), y) * xi
    return y * _col(ab[:, -1].sqrt(), y)


def cdm_loss(eps_model, x0: torch.Tensor, schedule: Schedule, *, lam: float = 10.0, steps: int = 5,
             dsigma: float = 0.05, weighting: str = "edm", t=None, noise=None, generator=None,
             parts: dict | None = None) -> torch.Tensor:
    """Per-sample CDM loss L_DSM + λ c(σ) ⟨h(x′₁,t′) − h(x_t,t), h(x′₂,t′) − h(x_t,t)⟩ (module docstring).

    ``t`` and ``noise`` (the DSM part) may be given; the rest (t, noise, U[0, Δσ], the chains' ξ) is drawn
    from ``generator`` in that order. ``parts``, if given, receives per-sample detached ``l0`` (L_DSM)
    and ``consistency`` (the consistency term c(σ)⟨·,·⟩ before λ: loss.csv's column of that name)."""
    if lam < 0 or steps < 1 or dsigma <= 0:
        raise ValueError(f"CDM needs lam >= 0, steps >= 1 and dsigma > 0; got lam={lam}, steps={steps}, dsigma={dsigma}")
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    n = len(x0)
    if t is None:
        t = sample_t(n, schedule.T, generator=generator, device=x0.device)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    x_t = schedule.q_sample(x0, t, noise)
    if lam == 0:  # the DDPM loss, exactly (and at its cost)
        l0 = (noise - eps_model(x_t, t)).float().pow(2).flatten(1).mean(1)
        if parts is not None:
            parts["l0"], parts["consistency"] = l0.detach(), torch.zeros_like(l0)
        return l0

    t64 = t.detach().to(torch.float64).cpu()
    sigma = schedule.sigma(t64)
    u = torch.rand(n, generator=generator, device=x0.device, dtype=torch.float64).cpu()
    sigma_end = torch.clamp(sigma - u * dsigma, min=float(schedule.sigma(0))).minimum(sigma)
    t_end = schedule.t_from_sigma(sigma_end).clamp(min=0.0).minimum(t64)  # fractional t′ <= t
    two = lambda v: torch.cat([v, v])  # noqa: E731  both chains as one batch of 2N
    x_end = reverse_sde_chains(eps_model, two(x_t.detach()), two(t64), two(t_end), schedule, steps, generator)

    # One forward with gradient for h(x_t, t), h(x′₁, t′) and h(x′₂, t′).
    eps_all = eps_model(torch.cat([x_t, x_end.to(x_t.dtype)]), torch.cat([t, two(t_end).to(device=t.device, dtype=t.dtype)]))
    eps0 = eps_all[:n]
    l0 = (noise - eps0).float().pow(2).flatten(1).mean(1)
    ab = schedule.alpha_bar(torch.cat([t64, two(t_end)]), check=False).to(x0.device)
    h = x0_prediction(torch.cat([x_t, x_end]).float(), eps_all.float(), ab)
    h0, h1, h2 = h[:n], h[n:2 * n], h[2 * n:]
    consistency = ((h1 - h0) * (h2 - h0)).flatten(1).mean(1)
    if weighting == "edm":
        c = SIGMA_DATA**2 / (sigma**2 + SIGMA_DATA**2)
        consistency = consistency * c.to(device=consistency.device, dtype=consistency.dtype)
    if parts is not None:
        parts["l0"], parts["consistency"] = l0.detach(), consistency.detach()
    return l0 + lam * consistency


def make_cdm_loss(cfg, schedule: Schedule):
    """``loss_fn(model, x0, generator, parts) -> per-sample loss`` of the ``cdm`` arm (lib.train)."""
    L = cfg.loss

    def loss_fn(model, x0, generator, parts):
        return cdm_loss(model, x0, schedule, lam=L.cdm_lambda, steps=L.cdm_steps, dsigma=L.cdm_dsigma,
                        generator=generator, parts=parts)

    return loss_fn

