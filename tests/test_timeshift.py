"""Time-Shift sampler (lib/related/timeshift.py): the trivial setting is DDIM/F-PNDM bit for bit, the NFE is the
base sampler's, the shift rule picks the variance-matching time in its window, and the two readings
query the network where they say they do."""
import pytest
import torch

from lib import samplers
from lib.related import timeshift
from lib.schedule import linear_schedule

import fixed_models  # tests/fixed_models.py

SCH = linear_schedule()


def mixture_model(d=16, seed=0):
    return fixed_models.mixture_model(SCH, d, seed)


def x_T(n=24, d=16, seed=1, dtype=torch.float32):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("base,ts", [("ddim", "ts-ddim"), ("pndm", "ts-pndm")])
@pytest.mark.parametrize("grid", ["uniform", "quad"])
@pytest.mark.parametrize("query", timeshift.QUERIES)
def test_trivial_setting_equals_the_base_sampler_bit_for_bit(base, ts, grid, query):
    model, x = mixture_model(), x_T()
    shifted_somewhere = False
    for S in (5, 10, 20):
        ref = samplers.sample(model, x, SCH, S, base, grid=grid)
        for opts in ({"cutoff": SCH.T - 1}, {"cutoff": 5000}, {"window": 0}):
            out = samplers.sample(model, x, SCH, S, ts, grid=grid, query=query, **opts)
            assert torch.equal(out, ref), (S, opts)
        # the default setting shifts (where a grid time lies above t_c): the comparison is not vacuous
        info = {}
        out = samplers.sample(model, x, SCH, S, ts, grid=grid, query=query, info=info)
        if info["ts_mean_shift"]:
            shifted_somewhere = True
            assert not torch.equal(out, ref)
    assert shifted_somewhere


@pytest.mark.parametrize("ts,base", [("ts-ddim", "ddim"), ("ts-pndm", "pndm")])
@pytest.mark.parametrize("query", timeshift.QUERIES)
def test_nfe_is_unchanged_and_counted(ts, base, query):
    model, x = mixture_model(), x_T(n=6)
    for S in (5, 10, 50):
        info = {}
        samplers.sample(model, x, SCH, S, ts, query=query, info=info)
        assert info["nfe"] == samplers.nfe(ts, S, query=query) == samplers.nfe(base, S)


def test_paper_defaults_per_step_count():
    assert [timeshift.default_window(S) for S in (10, 20, 50, 100)] == [40, 30, 8, 2]
    assert [timeshift.default_cutoff(S) for S in (5, 10, 20, 50, 100)] == [200, 200, 300, 300, 300]
    assert timeshift.default_window(5) == 40 and timeshift.default_window(1000) == 2
    info = {}
    samplers.sample(mixture_model(), x_T(n=4), SCH, 20, "ts-ddim", info=info)
    assert (info["ts_window"], info["ts_cutoff"], info["ts_query"]) == (30, 300, "nominal")  # the released reading


def test_shifted_times_is_the_variance_matching_argmin_in_the_clipped_window():
    ab = timeshift._AlphaBar(SCH, [])
    z = torch.randn(5, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    z = (z - z.mean(1, keepdim=True)) / z.std(1, keepdim=True)  # unit sample variance per row
    targets = torch.tensor([0.05, 0.3, 0.5, 0.7, 0.999], dtype=torch.float64)
    x = z * targets.sqrt()[:, None]  # per-sample Var(x) = target exactly
    for t_next, lower, upper, half in [(500, 400, 600, 20), (300, 280, 320, 40), (100, -1, 200, 15), (900, 800, 999, 5)]:
        ts = timeshift.shifted_times(x, t_next, lower, upper, half, ab)
        lo, hi = max(t_next - half, lower + 1, 0), min(t_next + half, upper - 1)
        cand = torch.arange(lo, hi + 1)
        for i in range(len(x)):
            d = (targets[i] - (1 - SCH.alpha_bar(cand.double()))).abs()
            assert ts[i] == cand[int(d.argmin())]
            assert lo <= ts[i] <= hi
    # a sample whose variance equals 1 - ᾱ_τ inside the window is mapped to τ
    tau = 437
    x = z[:1] * (1 - SCH.alpha_bar(tau)).sqrt()
    assert int(timeshift.shifted_times(x, 430, 400, 500, 20, ab)) == tau


def test_the_two_readings_query_the_network_where_they_say():
    model, x = mixture_model(), x_T(n=12)
    S = 10
    grid_times = [float(t) for t in SCH.timesteps(S)]
    shifted, nominal = {}, {}
    samplers.sample(model, x, SCH, S, "ts-ddim", query="shifted", info=shifted)
    samplers.sample(model, x, SCH, S, "ts-ddim", query="nominal", info=nominal)
    # released code: ε always at the nominal grid times
    assert nominal["eval_times"] == grid_times
    # paper: ε at per-sample shifted times while t' > t_c, at the grid times afterwards
    tc = shifted["ts_cutoff"]
    for t, got in zip(grid_times, shifted["eval_times"]):
        if t == grid_times[0] or t <= tc:
            assert got == t
        else:
            vals = got if isinstance(got, list) else [got]
            assert all(v == int(v) and abs(v - t) <= shifted["ts_window"] // 2 for v in vals)
    assert any(isinstance(g, list) or g != t for g, t in zip(shifted["eval_times"], grid_times))
    assert len(shifted["ts_mean_shift"]) == sum(1 for t in grid_times[1:] if t > tc)


@pytest.mark.parametrize("ts", ["ts-ddim", "ts-pndm"])
def test_samples_are_shifted_independently(ts):
    """Per-sample times: the batch result equals running every sample on its own (float64, so that
    batched and single-sample kernels agree to rounding; a wrongly shared shift moves x by ~1e-2)."""
    model, x = mixture_model(), x_T(n=6).double()
    out = samplers.sample(model, x, SCH, 10, ts)
    for i in range(len(x)):
        torch.testing.assert_close(samplers.sample(model, x[i:i + 1], SCH, 10, ts), out[i:i + 1], atol=1e-12, rtol=0)


def test_bad_options_are_rejected_with_the_valid_ones():
    model, x = mixture_model(), x_T(n=2)
    with pytest.raises(ValueError, match="query must be one of"):
        samplers.sample(model, x, SCH, 10, "ts-ddim", query="paper")
    with pytest.raises(ValueError, match="window must be an integer"):
        samplers.sample(model, x, SCH, 10, "ts-ddim", window=-3)
    with pytest.raises(ValueError, match="cutoff must be an integer"):
        samplers.nfe("ts-pndm", 10, cutoff=2.5)
    with pytest.raises(ValueError, match="at least 4 grid times"):
        samplers.sample(model, x, SCH, 2, "ts-pndm")


def released_ts_ddim(eps_model, x, times, w, t_c):
    """A re-statement, written for this test from the description of the released TS-DPM DDIM sampler
    (docs/method.md §4.1), on a given descending grid: ε_θ at the nominal t; from the second step on, while the
    next nominal time t' > t_c, each sample's target is the τ within ±⌊w/2⌋ of t' whose 1 − ᾱ_τ is nearest
    to its pixel variance (unbiased) before the step; DDIM (η = 0) from t to the target."""
    ab = lambda t: float(SCH.alpha_bar(float(t)))  # noqa: E731
    for i, t in enumerate(times):
        t_next = times[i + 1] if i + 1 < len(times) else -1
        e = eps_model(x, torch.full((len(x),), float(t), dtype=x.dtype))
        x0 = (x - (1 - ab(t)) ** 0.5 * e) / ab(t) ** 0.5
        out = torch.empty_like(x)
        for n in range(len(x)):
            target = t_next
            if i > 0 and t_next > t_c and w > 0:
                cand = list(range(max(t_next - w // 2, 0), t_next + w // 2 + 1))
                v = float(x[n].var())
                target = min(cand, key=lambda tau: (abs(v - (1 - ab(tau))), tau))
            out[n] = ab(target) ** 0.5 * x0[n] + (1 - ab(target)) ** 0.5 * e[n]
        x = out
    return x


@pytest.mark.parametrize("grid,S", [("uniform", 10), ("uniform", 20), ("quad", 10), ("quad", 20)])
def test_default_ts_ddim_equals_the_released_algorithm(grid, S):
    """The default (query='nominal') is the released code's reading: equal to float64 rounding (1e-12;
    measured ~1e-15) with the paper's window and cutoff; the paper's Algorithm 3 (query='shifted') is not."""
    model, x = mixture_model(), x_T(n=8).double()
    times = SCH.timesteps(S, grid).tolist()
    info = {}
    ours = samplers.sample(model, x, SCH, S, "ts-ddim", grid=grid, info=info)
    assert info["ts_mean_shift"], "the comparison must include shifted steps"
    ref = released_ts_ddim(model, x, times, timeshift.default_window(S), timeshift.default_cutoff(S))
    torch.testing.assert_close(ours, ref, atol=1e-12, rtol=0)
    paper = samplers.sample(model, x, SCH, S, "ts-ddim", grid=grid, query="shifted")
    assert (paper - ours).abs().max() > 1e-3 * ours.abs().max()
