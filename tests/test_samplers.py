"""Samplers (lib/samplers.py): equality with diffusers' schedulers, convergence order against the exact
Gaussian-data solution, honest NFE counts, the registry and its errors."""
import math

import numpy as np
import pytest
import torch
from scipy import integrate

from lib import samplers
from lib.analytic import gaussian_eps, gaussian_ode_solution
from lib.schedule import linear_schedule

import fixed_models  # tests/fixed_models.py

SCH = linear_schedule()
ALL = ("ddim", "ddpm", "spndm", "pndm", "deis")
DIFFUSERS_KW = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                    set_alpha_to_one=True, timestep_spacing="leading", steps_offset=0)


def mixture_model(d=16, seed=0):
    return fixed_models.mixture_model(SCH, d, seed)


def x_T(n=8, d=16, seed=1, dtype=torch.float32):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def run_diffusers(scheduler, model, x, *, before_step=None, noises=None):
    """The diffusers sampling loop: evaluate the model at each scheduler timestep, then step."""
    for i, t in enumerate(scheduler.timesteps):
        if before_step is not None:
            before_step(scheduler, i)
        kw = {} if noises is None else {"eta": 1.0, "variance_noise": noises[i]}
        x = scheduler.step(model(x, t.to(x.dtype).expand(len(x))), t, x, **kw).prev_sample
    return x


def make(cls, dtype, **kw):
    s = cls(**DIFFUSERS_KW, **kw)
    if dtype == torch.float64:
        # Same ᾱ as ours (diffusers builds it in float32): isolates the algorithm from rounding.
        s.alphas_cumprod = SCH.alphas_bar.clone()
    return s


# ============================================================================ diffusers equality
@pytest.mark.parametrize("S", [10, 20, 50])
@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-11), (torch.float32, 2e-5)])
def test_ddim_equals_diffusers_ddim_scheduler(S, dtype, atol):
    from diffusers import DDIMScheduler

    model, x = mixture_model(), x_T(dtype=dtype)
    ref = make(DDIMScheduler, dtype, clip_sample=False)
    ref.set_timesteps(S)
    info = {}
    ours = samplers.sample(model, x, SCH, S, "ddim", info=info)
    assert info["timesteps"] == ref.timesteps.tolist()
    torch.testing.assert_close(ours, run_diffusers(ref, model, x), atol=atol, rtol=0)


@pytest.mark.parametrize("S", [10, 50])
def test_ddpm_equals_diffusers_ddim_eta1_with_the_same_noise(S):
    from diffusers import DDIMScheduler

    model, x = mixture_model(), x_T(dtype=torch.float64)
    ours = samplers.sample(model, x, SCH, S, "ddpm", generator=torch.Generator().manual_seed(7))
    # Our sampler draws z once per step with σ > 0 (all but the last, which goes to ᾱ = 1).
    g = torch.Generator().manual_seed(7)
    noises = [torch.randn(x.shape, generator=g, dtype=x.dtype) for _ in range(S - 1)] + [torch.zeros_like(x)]
    ref = make(DDIMScheduler, torch.float64, clip_sample=False)
    ref.set_timesteps(S)
    torch.testing.assert_close(ours, run_diffusers(ref, model, x, noises=noises), atol=1e-11, rtol=0)
    # ... and ddpm is ddim with η = 1.
    again = samplers.sample(model, x, SCH, S, "ddim", eta=1.0, generator=torch.Generator().manual_seed(7))
    assert torch.equal(ours, again)


@pytest.mark.parametrize("S", [10, 20, 50])
@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-11), (torch.float32, 5e-5)])
def test_fpndm_equals_diffusers_pndm_with_prk_steps(S, dtype, atol):
    """T//S is even for these S, so diffusers' integer midpoint t - (T//S)//2 is consistent (see
    samplers.pndm_midpoint) and the evaluation times must agree one for one."""
    from diffusers import PNDMScheduler

    model, x = mixture_model(), x_T(dtype=dtype)
    ref = make(PNDMScheduler, dtype, skip_prk_steps=False)
    ref.set_timesteps(S)
    info = {}
    ours = samplers.sample(model, x, SCH, S, "pndm", info=info)
    assert info["eval_times"] == [float(t) for t in ref.timesteps.tolist()]
    torch.testing.assert_close(ours, run_diffusers(ref, model, x), atol=atol, rtol=0)


@pytest.mark.parametrize("S", [2, 10, 20, 50])
def test_spndm_equals_diffusers_plms_truncated_to_second_order(S):
    """diffusers' PLMS mode (skip_prk_steps=True) starts exactly like S-PNDM (improved Euler, then
    (3e₁ - e₂)/2) but raises the order to 3 and 4 later. Trimming its history to one past ε before every
    later step keeps it at second order, which is S-PNDM; S = 2 needs no trimming at all."""
    from diffusers import PNDMScheduler

    def keep_second_order(scheduler, i):
        if i >= 2:
            scheduler.ets = scheduler.ets[-1:]

    model, x = mixture_model(), x_T(dtype=torch.float64)
    ref = make(PNDMScheduler, torch.float64, skip_prk_steps=True)
    ref.set_timesteps(S)
    info = {}
    ours = samplers.sample(model, x, SCH, S, "spndm", info=info)
    assert info["eval_times"] == [float(t) for t in ref.timesteps.tolist()]
    torch.testing.assert_close(ours, run_diffusers(ref, model, x, before_step=keep_second_order), atol=1e-11, rtol=0)
    if S > 3:  # without the trimming diffusers goes to higher order and differs: the check has teeth
        ref.set_timesteps(S)
        assert (run_diffusers(ref, model, x) - ours).abs().max() > 1e-6


@pytest.mark.parametrize("grid,S", [("uniform", 10), ("uniform", 30), ("quad", 50)])
def test_deis_tab0_is_ddim_bit_for_bit(grid, S):
    model, x = mixture_model(), x_T()
    a = samplers.sample(model, x, SCH, S, "deis", grid=grid, ab_order=0)
    b = samplers.sample(model, x, SCH, S, "ddim", grid=grid)
    assert torch.equal(a, b)


# ============================================================================ DEIS coefficients
def _sigma_integral(f, t, t_next):
    """∫_{σ(t)}^{σ(t')} f(τ(σ)) dσ by adaptive quadrature, τ(σ) from schedule.t_from_sigma."""
    tau = lambda s: float(SCH.t_from_sigma(torch.tensor(s, dtype=torch.float64)))
    lo, hi = float(SCH.sigma(float(t_next))), float(SCH.sigma(float(t)))
    knots = [float(SCH.sigma(float(k))) for k in range(int(t_next) + 1, int(t))]  # kinks of τ(σ)
    val, _ = integrate.quad(lambda s: f(tau(s)), lo, hi, points=knots or None, limit=1000, epsabs=1e-15, epsrel=1e-11)
    return -val


@pytest.mark.parametrize("t,t_next,nodes", [(12, 5, [12, 20, 30]), (0, -1, [0, 10, 20, 30]), (500, 400, [500, 600])])
def test_deis_weights_integrate_polynomials_exactly(t, t_next, nodes):
    """Σ_j C_j p(t_j) = √ᾱ_{t'} ∫ p(τ) dσ for every polynomial p of degree < number of nodes."""
    ab_n = float(SCH.alpha_bar(float(t_next)))
    C = [math.sqrt(ab_n) * v for v in samplers.lagrange_integrals(SCH, t, t_next, nodes)]
    for deg in range(len(nodes)):
        p = lambda tau: (tau / 100.0) ** deg
        want = math.sqrt(ab_n) * _sigma_integral(p, t, t_next)
        got = sum(c * p(tj) for c, tj in zip(C, nodes))
        assert got == pytest.approx(want, rel=1e-9, abs=1e-13), deg


def test_deis_coefficients_partition_of_unity_and_warmup():
    pairs = SCH.step_pairs(20, "quad")
    coefs = samplers.deis_coefficients(SCH, pairs, ab_order=2)
    sizes = [len(c) for _, c in coefs]
    assert sizes[:3] == [1, 2, 3] and set(sizes[3:]) <= {1, 3}
    for (t, t_next), (a, cs) in zip(pairs, coefs):
        a_ddim, b_ddim, _ = samplers.ddim_coefficients(SCH, t, t_next)
        assert a == pytest.approx(a_ddim, rel=1e-14) and sum(cs) == pytest.approx(b_ddim, rel=1e-12, abs=1e-15)
    with pytest.raises(ValueError, match="ab_order"):
        samplers.deis_coefficients(SCH, pairs, ab_order=4)


def test_deis_handles_repeated_quad_times():
    # quad with S = 100 repeats t = 0 (DDIM-code quirk): no coincident Lagrange nodes, finite output.
    pairs = SCH.step_pairs(100, "quad")
    assert sum(t == tn for t, tn in pairs) > 0
    out = samplers.sample(mixture_model(), x_T(), SCH, 100, "deis", grid="quad", ab_order=3)
    assert torch.isfinite(out).all()


# ============================================================================ convergence (exact answer)
S_DATA = 0.5


def rel_errors(method, grid, steps, **opts):
    """Relative error of x_0 vs the exact flow started at the sampler's own first time (float64)."""
    model = lambda x, t: gaussian_eps(x, t, SCH, S_DATA)
    x = x_T(4, 8, seed=3, dtype=torch.float64)
    errs = []
    for S in steps:
        t0 = int(SCH.timesteps(S, grid)[0])  # 900 for S = 10, 950 for S = 20, ...: not 999
        exact = gaussian_ode_solution(x, t0, -1, SCH, S_DATA)
        out = samplers.sample(model, x, SCH, S, method, grid=grid, **opts)
        errs.append(float((out - exact).norm() / exact.norm()))
    return np.array(errs)


def slope(steps, errs):
    return -np.polyfit(np.log(steps), np.log(errs), 1)[0]


STEPS_OF_GRID = {"uniform": [10, 20, 25, 50, 100], "quad": [10, 20, 40, 80]}


@pytest.mark.parametrize("grid", STEPS_OF_GRID)
def test_convergence_orders_on_gaussian_data(grid):
    steps = STEPS_OF_GRID[grid]
    e_ddim = rel_errors("ddim", grid, steps)
    assert 0.85 < slope(steps, e_ddim) < 1.15  # DDIM = Euler in (y, σ): first order
    for method, opts, min_slope in [("spndm", {}, 1.5), ("deis", {"ab_order": 1}, 1.6), ("deis", {"ab_order": 2}, 2.0)]:
        e = rel_errors(method, grid, steps, **opts)
        assert slope(steps, e) > min_slope, (method, opts, e)
        assert (e < e_ddim / 2).all(), (method, opts)
    e_pndm = rel_errors("pndm", grid, steps)
    if grid == "quad":
        assert slope(steps, e_pndm) > 2.3
        assert slope(steps, rel_errors("deis", grid, steps, ab_order=3)) > 2.3
    else:
        # On the uniform grid ε ∝ √(1-ᾱ_t) has a √ singularity at t = -1 and the last step (0 → -1) is
        # shorter than the multistep assumes, which caps F-PNDM's measured slope (~1.4); it still beats
        # DDIM by more than 10x at equal or larger NFE.
        for S, e in zip(steps[:-1], e_pndm[:-1]):
            S_ddim = min(k for k in steps if k >= samplers.nfe("pndm", S))
            assert e < e_ddim[steps.index(S_ddim)] / 10, (S, e)


def test_ddim_eta_gives_different_but_seeded_samples():
    model, x = mixture_model(), x_T()
    a = samplers.sample(model, x, SCH, 10, "ddim", eta=0.5, generator=torch.Generator().manual_seed(1))
    b = samplers.sample(model, x, SCH, 10, "ddim", eta=0.5, generator=torch.Generator().manual_seed(1))
    c = samplers.sample(model, x, SCH, 10, "ddim", eta=0.5, generator=torch.Generator().manual_seed(2))
    d = samplers.sample(model, x, SCH, 10, "ddim", eta=0.0, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert torch.equal(d, samplers.sample(model, x, SCH, 10, "ddim"))  # deterministic ignores the generator


# ============================================================================ NFE, info, registry
@pytest.mark.parametrize("method", ALL)
@pytest.mark.parametrize("S,grid", [(10, "uniform"), (30, "uniform"), (7, "uniform"), (13, "quad"), (50, "quad"),
                                    (100, "quad")])
def test_nfe_prediction_equals_counted_calls(method, S, grid):
    calls = []

    def model(x, t):
        calls.append(t)
        assert t.shape == (len(x),) and t.dtype == torch.float32 and t.device == x.device
        return gaussian_eps(x, t, SCH, 0.5).to(x.dtype)

    info = {}
    samplers.sample(model, x_T(2, 3), SCH, S, method, grid=grid, info=info, generator=torch.Generator().manual_seed(0))
    n = len(SCH.timesteps(S, grid))
    expected = {"ddim": n, "ddpm": n, "deis": n, "spndm": n + 1, "pndm": n + 9}[method]
    assert samplers.nfe(method, S, grid) == info["nfe"] == len(calls) == len(info["eval_times"]) == expected
    assert info["timesteps"] == SCH.timesteps(S, grid).tolist()
    assert info["method"] == method and info["grid"] == grid and info["num_steps"] == S


def test_nfe_pndm_s_plus_9_and_too_few_steps_rejected():
    assert samplers.nfe("pndm", 10) == 19 and samplers.nfe("spndm", 10) == 11
    assert samplers.nfe("pndm", 30) == 31 + 9  # uniform S = 30 has 31 times (range(0, 1000, 33))
    assert samplers.nfe("pndm", 3) == 4 + 9  # S = 3 gives 4 times (0, 333, 666, 999)
    with pytest.raises(ValueError, match="at least 4"):
        samplers.nfe("pndm", 2)
    with pytest.raises(ValueError, match="at least 4"):
        samplers.sample(mixture_model(), x_T(), SCH, 2, "pndm")
    with pytest.raises(ValueError, match="at least 2"):
        samplers.sample(mixture_model(), x_T(), SCH, 1, "spndm")


def test_unknown_method_and_options_are_rejected_with_the_valid_ones():
    model, x = mixture_model(), x_T()
    with pytest.raises(ValueError, match="valid methods: ddim, ddpm, spndm, pndm, deis"):
        samplers.sample(model, x, SCH, 10, "euler")
    with pytest.raises(ValueError, match="valid methods"):
        samplers.nfe("dpm", 10)
    with pytest.raises(ValueError, match=r"unknown option.*'order'.*valid options: eta"):
        samplers.sample(model, x, SCH, 10, "ddim", order=2)
    with pytest.raises(ValueError, match=r"unknown option.*'order'.*valid options: ab_order"):
        samplers.sample(model, x, SCH, 10, "deis", order=3)  # the old name is refused, not reinterpreted
    with pytest.raises(ValueError, match="valid options: ab_order"):
        samplers.nfe("deis", 10, eta=0.5)
    with pytest.raises(ValueError, match="valid options: none"):
        samplers.sample(model, x, SCH, 10, "pndm", eta=0.0)
    with pytest.raises(ValueError, match="eta"):
        samplers.sample(model, x, SCH, 10, "ddim", eta=1.5)
    with pytest.raises(ValueError, match="ab_order"):
        samplers.sample(model, x, SCH, 10, "deis", ab_order=4)
    with pytest.raises(ValueError, match="grid"):
        samplers.sample(model, x, SCH, 10, "ddim", grid="cosine")
    with pytest.raises(ValueError, match="shaped like x"):
        samplers.sample(lambda x, t: x[:, :2], x, SCH, 10, "ddim")


def test_register_adds_a_method_with_its_options_and_nfe():
    def twice_ddim(eps_model, x_T, schedule, pairs, *, generator=None, progress=False, info=None, scale=1.0):
        """Evaluates ε twice per step (a stand-in for a later module's method)."""
        x = x_T
        for t, t_next in samplers.progress_iter(pairs, progress):
            tt = samplers.time_tensor(t, x)
            eps = (eps_model(x, tt) + eps_model(x, tt)) / 2
            x = samplers.ddim_step(x, scale * eps, schedule, t, t_next)
        info["custom"] = True
        return x

    try:
        samplers.register("twice", twice_ddim, lambda schedule, pairs, scale=1.0: 2 * len(pairs))
        assert samplers.METHODS["twice"].options == {"scale": 1.0}
        model, x, info = mixture_model(), x_T(), {}
        out = samplers.sample(model, x, SCH, 10, "twice", info=info, progress=True)
        assert info["nfe"] == samplers.nfe("twice", 10) == 20 and info["custom"]
        torch.testing.assert_close(out, samplers.sample(model, x, SCH, 10, "ddim"))
        with pytest.raises(ValueError, match="valid options: scale"):
            samplers.sample(model, x, SCH, 10, "twice", eta=0.1)
        with pytest.raises(ValueError, match="already registered"):
            samplers.register("twice", samplers.ddim, lambda *a, **k: 0)
        with pytest.raises(ValueError, match="keyword-only"):
            samplers.register("bad", lambda eps_model, x, s, n, g, **kw: x, lambda *a, **k: 0)
    finally:
        samplers.METHODS.pop("twice", None)


def test_sample_keeps_dtype_leaves_x_T_untouched_and_runs_without_grad():
    lin = torch.nn.Linear(16, 16)
    model = lambda x, t: lin(x) * 0.1
    x = x_T()
    x_copy = x.clone()
    for method in ALL:
        out = samplers.sample(model, x, SCH, 10, method, generator=torch.Generator().manual_seed(0), progress=True)
        assert out.dtype == x.dtype and out.shape == x.shape and not out.requires_grad
    assert torch.equal(x, x_copy)


def test_nfe_counter_counts_and_records_times():
    c = samplers.NFECounter(lambda x, t: torch.zeros_like(x))
    x = torch.zeros(3, 2)
    c(x, samplers.time_tensor(5, x))
    c(x, torch.tensor([1.0, 2.0, 3.0]))
    assert c.count == 2 and c.times == [5.0, [1.0, 2.0, 3.0]]
    c.reset()
    assert c.count == 0 and c.times == []


def test_pndm_midpoint_rule():
    assert samplers.pndm_midpoint(900, 800) == 850
    assert samplers.pndm_midpoint(66, 33) == 50  # odd step: the integer point nearer to t (diffusers' h = 16)
    assert samplers.pndm_midpoint(0, -1) == 0
