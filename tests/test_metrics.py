"""Metrics: Fréchet distance identities (float64), bootstrap intervals (lib.measure.metrics), the FD_clf classifier (lib.measure.classifier), toy metrics (lib.measure.toymetrics)."""
from dataclasses import replace

import numpy as np
import pytest
import torch

from lib.measure import classifier, metrics, toymetrics

from lib import data
from lib.infra.config import get_config


def _rand_cov(rng, d):
    a = rng.standard_normal((d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


# ---------------------------------------------------------------------------- Fréchet distance
def test_fd_identical_gaussians_is_zero():
    rng = np.random.default_rng(0)
    mu, cov = rng.standard_normal(16), _rand_cov(rng, 16)
    assert abs(metrics.frechet_distance(mu, cov, mu, cov)) < 1e-9


def test_fd_closed_form_diagonal():
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.standard_normal(8), rng.standard_normal(8)
    a, b = rng.uniform(0.1, 3, 8), rng.uniform(0.1, 3, 8)
    ref = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = metrics.frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
    assert abs(got - ref) < 1e-10 * max(1.0, ref)


def test_fd_one_dimensional_and_shape_errors():
    # 1-D: (m1 - m2)² + (s1 - s2)²
    assert metrics.frechet_distance(1.0, 4.0, -1.0, 1.0) == pytest.approx(4.0 + 1.0, abs=1e-12)
    with pytest.raises(ValueError, match="shapes"):
        metrics.frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


def test_fd_retries_with_eps_offset_when_sqrtm_fails(monkeypatch):
    real = metrics.linalg.sqrtm
    calls = []

    def failing_once(a):
        calls.append(a)
        return np.full_like(a, np.nan) if len(calls) == 1 else real(a)

    monkeypatch.setattr(metrics.linalg, "sqrtm", failing_once)
    got = metrics.frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), 4 * np.eye(2), eps=1e-6)
    assert len(calls) == 2 and np.allclose(calls[1], (1 + 1e-6) * (4 + 1e-6) * np.eye(2))
    assert got == pytest.approx(2 * (2 - 1) ** 2, abs=1e-5)


@pytest.mark.filterwarnings("ignore:Matrix is singular")
def test_fd_singular_covariances_stay_finite():
    # rank-1 covariances: the product is singular; the result must still be finite and ≈ closed form
    v = np.array([[1.0, 0.0], [0.0, 0.0]])
    got = metrics.frechet_distance(np.zeros(2), v, np.zeros(2), 4 * v)
    assert np.isfinite(got) and got == pytest.approx(1.0, abs=1e-4)


def test_fixed_reference_form_equals_sqrtm_form():
    rng = np.random.default_rng(2)
    f_ref = rng.standard_normal((400, 12)) @ rng.standard_normal((12, 12))
    f_gen = rng.standard_normal((300, 12)) @ rng.standard_normal((12, 12)) + 0.3
    fast = metrics._FDToReference(f_ref)(torch.from_numpy(f_gen))
    slow = metrics.fd_from_features(f_gen, f_ref)
    assert fast == pytest.approx(slow, rel=1e-9)


# ---------------------------------------------------------------------------- bootstrap
def _feats(n, d=8, shift=0.0, seed=0):
    return np.random.default_rng(seed).standard_normal((n, d)) + shift


def test_fd_bootstrap_covers_and_shrinks():
    f_ref = _feats(4000, seed=100)
    small = metrics.fd_bootstrap(_feats(300, shift=0.3, seed=1), f_ref, n_boot=100, seed=0)
    large = metrics.fd_bootstrap(_feats(3000, shift=0.3, seed=2), f_ref, n_boot=100, seed=0)
    for r in (small, large):
        assert r["lo"] <= r["value"] <= r["hi"] and r["std"] > 0
    assert large["n"] == 3000 and (large["hi"] - large["lo"]) < 0.5 * (small["hi"] - small["lo"])
    # calibration: the bootstrap std of one set ≈ the spread of FD over independent generated sets
    spread = np.std([metrics.fd_from_features(_feats(1000, shift=0.3, seed=10 + k), f_ref) for k in range(40)])
    boot = metrics.fd_bootstrap(_feats(1000, shift=0.3, seed=3), f_ref, n_boot=100, seed=0)
    assert 0.6 < boot["std"] / spread < 1.6
    again = metrics.fd_bootstrap(_feats(300, shift=0.3, seed=1), f_ref, n_boot=100, seed=0)
    assert again == small  # deterministic under the seed


def test_compare_bootstrap_detects_a_real_difference_and_not_a_null_one():
    f_ref = _feats(3000, seed=100)
    worse, better = _feats(2000, shift=0.4, seed=1), _feats(2000, shift=0.1, seed=2)
    r = metrics.compare_bootstrap(worse, better, f_ref, n_boot=100, seed=0)
    assert r["diff"] > 0 and r["excludes_zero"] and r["diff_lo"] <= r["diff"] <= r["diff_hi"]
    assert r["rel"] == pytest.approx((r["fd_a"] - r["fd_b"]) / r["fd_a"]) and 0 < r["rel_lo"] <= r["rel_hi"] < 1
    same = metrics.compare_bootstrap(_feats(2000, shift=0.2, seed=3), _feats(2000, shift=0.2, seed=4), f_ref,
                                     n_boot=100, seed=0)
    assert not same["excludes_zero"] and same["diff_lo"] < 0 < same["diff_hi"]


# ---------------------------------------------------------------------------- classifier (FD_clf)
def test_classifier_learns_digits_and_features():
    x, y = data.load_images(replace(get_config("ci").data, dataset="digits", image_size=8))
    model = classifier.train_classifier(x, y, steps=200, width=16, seed=0, progress=False)
    assert model.meta["heldout_accuracy"] > 0.85
    f = classifier.features(model, data.to_model_range(x[:300]), batch_size=128)
    assert f.dtype == np.float64 and f.shape == (300, 64)
    # real digits are closer to real digits than noise images are
    noise = torch.rand(300, 1, 8, 8) * 2 - 1
    f_ref = classifier.features(model, data.to_model_range(x[300:900]))
    assert metrics.fd_from_features(f, f_ref) < 0.2 * metrics.fd_from_features(classifier.features(model, noise), f_ref)
    with pytest.raises(ValueError, match=r"\[N, 1, 8, 8\]"):
        classifier.features(model, torch.zeros(2, 3, 8, 8))


def test_get_classifier_caches_and_round_trips(tmp_path, monkeypatch):
    cfg = get_config("ci", ["eval.classifier_steps=30"])
    m1 = classifier.get_classifier(cfg.data, cfg.eval, cache_dir=tmp_path, progress=False)
    key = classifier.classifier_key(cfg.data, cfg.eval)
    assert key == "digits_8px_w8_s30"
    assert (tmp_path / f"{key}.pt").is_file() and (tmp_path / f"{key}.json").is_file()
    assert not list(tmp_path.glob(".*.tmp"))
    monkeypatch.setattr(classifier, "train_classifier", lambda *a, **k: pytest.fail("retrained despite the cache"))
    m2 = classifier.get_classifier(cfg.data, cfg.eval, cache_dir=tmp_path)
    x = torch.rand(10, 1, 8, 8) * 2 - 1
    assert np.array_equal(classifier.features(m1, x), classifier.features(m2, x))
    assert m2.meta["heldout_accuracy"] == m1.meta["heldout_accuracy"] and m2.meta["feature_dim"] == 32
    with pytest.raises(ValueError, match="inception"):
        classifier.get_classifier(replace(cfg.data, dataset="celeba"), cfg.eval, cache_dir=tmp_path)


# ---------------------------------------------------------------------------- toy metrics
@pytest.fixture(scope="module")
def ring():
    return data.toy_distribution("ring8")


def test_toy_metrics_of_true_samples_are_null(ring):
    x = ring.sample(5000, torch.Generator().manual_seed(1))
    m = toymetrics.toy_metrics(x, ring, seed=0)
    assert m["fd_exact"] < 0.01
    assert abs(m["nll"] - m["nll_ref"]) < 0.05
    assert abs(m["mmd"]) < 2e-3
    assert m["mode_coverage"] == 1.0 and m["mode_tv"] < 0.03
    assert abs(m["frac_in_modes"] - m["frac_in_modes_expected"]) < 0.01
    assert m["frac_in_modes_expected"] == pytest.approx(1 - np.exp(-4.5))


def test_toy_metrics_detect_shift_and_collapse(ring):
    x = ring.sample(5000, torch.Generator().manual_seed(1))
    null = toymetrics.toy_metrics(x, ring, seed=0)
    shifted = toymetrics.toy_metrics(x + torch.tensor([0.5, 0.0]), ring, seed=0)
    assert shifted["fd_exact"] > 0.2 and shifted["nll"] > null["nll"] + 5
    assert shifted["mmd"] > 50 * max(abs(null["mmd"]), 1e-4) and shifted["frac_in_modes"] < 0.5
    collapsed = toymetrics.toy_metrics(ring.means[0].float() + 0.1 * torch.randn(5000, 2), ring, seed=0)
    assert collapsed["mode_coverage"] == 1 / 8 and collapsed["mode_tv"] > 0.85
    assert collapsed["fd_exact"] > 1.0 and collapsed["mmd"] > 0.1
    # samples piled on the centres have a *lower* NLL than true samples: NLL alone is not a divergence
    sharp = toymetrics.toy_metrics(ring.means.float().repeat(100, 1), ring, seed=0)
    assert sharp["nll"] < null["nll_ref"] and sharp["mode_coverage"] == 1.0
    with pytest.raises(ValueError, match="not finite"):
        toymetrics.toy_metrics(torch.full((10, 2), float("nan")), ring)


def test_paired_comparison_is_narrower_for_paired_samples():
    """Two arms whose sample i shares a common component (as samples from the same x_T do): the
    paired bootstrap sees that the difference varies less than each arm."""
    import numpy as np
    from lib.measure.metrics import compare_bootstrap

    rng = np.random.default_rng(0)
    ref = rng.normal(size=(2000, 4))
    common = rng.normal(size=(400, 4))
    a = common + 0.1 * rng.normal(size=(400, 4)) + 0.3
    b = common + 0.1 * rng.normal(size=(400, 4)) + 0.2
    ind = compare_bootstrap(a, b, ref, n_boot=200, seed=1)
    par = compare_bootstrap(a, b, ref, n_boot=200, seed=1, paired=True)
    assert par["diff"] == ind["diff"] and par["diff"] > 0
    assert par["diff_hi"] - par["diff_lo"] < 0.5 * (ind["diff_hi"] - ind["diff_lo"])
    assert par["excludes_zero"]
    with pytest.raises(ValueError, match="equally many"):
        compare_bootstrap(a, b[:-1], ref, paired=True)


def test_small_sample_fd_interval_is_centred_on_the_estimate():
    """At n ≈ D² scale the bootstrap FDs all exceed the full-sample FD (resampling duplicates
    points); the bias-corrected interval must still contain the estimate."""
    import numpy as np
    from lib.measure.metrics import fd_bootstrap

    rng = np.random.default_rng(0)
    ref, gen = rng.normal(size=(5000, 32)), rng.normal(size=(120, 32)) + 0.2
    b = fd_bootstrap(gen, ref, n_boot=100, seed=0)
    assert b["bias"] > 0 and b["lo"] <= b["value"] <= b["hi"]
    assert b["hi"] - b["lo"] < 4 * 1.96 * b["std"]


# ---------------------------------------------------------------------------- KID
def _kid_direct(x, y):
    """The unbiased MMD² with k(x, y) = (x·y/d + 1)³ by explicit double loops (float64)."""
    d, n, m = x.shape[1], len(x), len(y)
    k = lambda a, b: (float(a @ b) / d + 1.0) ** 3  # noqa: E731
    sxx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    syy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    sxy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return sxx + syy - 2 * sxy


def test_kid_matches_the_direct_formula_and_clean_fid():
    from cleanfid.fid import kernel_distance

    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((40, 5)), rng.standard_normal((55, 5)) * 1.3 + 0.4
    assert metrics.kid(x, y) == pytest.approx(_kid_direct(x, y), rel=1e-10)
    # clean-fid subsamples min(n, m) points per subset; with equal sizes every subset is the whole set
    x2 = rng.standard_normal((60, 8))
    y2 = rng.standard_normal((60, 8)) + 0.3
    assert metrics.kid(x2, y2) == pytest.approx(kernel_distance(y2, x2, num_subsets=3), rel=1e-9)
    with pytest.raises(ValueError, match="features"):
        metrics.KIDToReference((np.zeros(3), np.eye(3)))


def test_kid_is_unbiased_where_fd_is_not():
    rng = np.random.default_rng(1)
    kids, fds = [], []
    for _ in range(300):
        x, y = rng.standard_normal((50, 4)), rng.standard_normal((80, 4))
        kids.append(metrics.kid(x, y))
        fds.append(metrics.fd_from_features(x, y))
    kids = np.array(kids)
    assert abs(kids.mean()) < 3 * kids.std(ddof=1) / np.sqrt(len(kids))  # mean 0 within its standard error
    assert np.mean(fds) > 10 * kids.std(ddof=1) / np.sqrt(len(kids))  # FD of equal distributions: biased > 0
    assert (kids < 0).any()  # unbiased: it can go below 0


def test_kid_bootstrap_is_centred_and_detects_a_shift():
    rng = np.random.default_rng(2)
    y = rng.standard_normal((400, 6))
    same = metrics.kid_bootstrap(rng.standard_normal((200, 6)), y, n_boot=1000)
    assert same["lo"] <= same["value"] <= same["hi"] and same["lo"] < 0 < same["hi"]
    shifted = metrics.kid_bootstrap(rng.standard_normal((200, 6)) + 0.5, y, n_boot=1000)
    assert shifted["lo"] > 0
    x = rng.standard_normal((30, 6))
    assert metrics.kid_bootstrap(x, y, n_boot=10)["value"] == pytest.approx(metrics.kid(x, y), rel=1e-12)


def test_the_fd_bootstrap_runs_on_one_thread_and_gives_back_the_threads(monkeypatch):
    """Beside a busy process, two threads' spin-waits made each replicate ~15x slower
    (bench/results/boot_threads.md); one thread gives the same bits."""
    import torch

    from lib.measure import metrics
    seen, call = set(), metrics._FDToReference.__call__
    monkeypatch.setattr(metrics._FDToReference, "__call__", lambda self, f: seen.add(torch.get_num_threads()) or call(self, f))
    rng = np.random.default_rng(0)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        metrics.fd_bootstrap(rng.normal(size=(50, 4)), rng.normal(size=(200, 4)), n_boot=5)
        assert seen == {1} and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
