"""Consistent Diffusion Models loss (lib/related/cdm.py): λ = 0 is the DDPM loss exactly, gradients never flow
through the chains, the consistency term vanishes for a consistent (exact) model and not for an
inconsistent one, and the arm trains through lib.train (also as a fine-tune via lib.infra.rundir.seed)."""
import json

import pytest
import torch

from lib import losses

from lib.infra import rundir
from lib.related import cdm
from lib.analytic import gaussian_eps
from lib.infra.config import get_config, toy_config, with_overrides
from lib.mlp import ToyMLP
from lib.schedule import linear_schedule
from lib.experiment.steptime import seconds_per_step
from lib.infra.runlog import read_log
from lib.train import train
from lib.unet import build_unet

SCH = linear_schedule()


def images(n=6, seed=0):
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def fixed_t_noise(x0, seed=1):
    g = torch.Generator().manual_seed(seed)
    return losses.sample_t(len(x0), SCH.T, generator=g), torch.randn(x0.shape, generator=g)


@pytest.mark.parametrize("kind", ["unet", "mlp"])
def test_lambda_zero_is_the_ddpm_loss_exactly(kind):
    torch.manual_seed(0)
    net = build_unet(get_config("ci").model) if kind == "unet" else ToyMLP(hidden=32)
    x0 = images() if kind == "unet" else torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
    t, noise = fixed_t_noise(x0)
    ref = losses.ddpm_loss(net, x0, SCH, t=t, noise=noise)
    parts = {}
    assert torch.equal(cdm.cdm_loss(net, x0, SCH, lam=0.0, t=t, noise=noise, parts=parts), ref)
    assert torch.equal(parts["l0"], ref) and not parts["consistency"].any()
    # with λ > 0 the DSM part is still the DDPM loss (the chains do not touch it)
    parts = {}
    loss = cdm.cdm_loss(net, x0, SCH, lam=10.0, t=t, noise=noise, generator=torch.Generator().manual_seed(2), parts=parts)
    torch.testing.assert_close(parts["l0"], ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss, parts["l0"] + 10.0 * parts["consistency"])
    assert bool(parts["consistency"].abs().sum() > 0)


class Recorder(torch.nn.Module):
    """A toy ε-model that records, per call, whether grad was enabled and whether its input needed grad."""

    def __init__(self):
        super().__init__()
        self.net = ToyMLP(hidden=16)
        self.calls = []

    def forward(self, x, t):
        self.calls.append((len(x), torch.is_grad_enabled(), x.requires_grad))
        return self.net(x, t)


def test_gradients_do_not_flow_through_the_chains():
    torch.manual_seed(0)
    m = Recorder()
    x0 = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    t, noise = fixed_t_noise(x0)
    loss = cdm.cdm_loss(m, x0, SCH, lam=10.0, steps=4, t=t, noise=noise, generator=torch.Generator().manual_seed(3))
    # 4 chain steps on both chains (2N, no grad), then one forward with grad on [x_t, x′₁, x′₂] (3N)
    assert m.calls[:4] == [(16, False, False)] * 4
    assert m.calls[4:] == [(24, True, False)]
    loss.mean().backward()
    grads = {k: p.grad.clone() for k, p in m.named_parameters()}
    assert all(torch.isfinite(g).all() for g in grads.values())

    # Reference: the same random draws, chains run separately and their outputs used as constants.
    m.zero_grad()
    g = torch.Generator().manual_seed(3)
    u = torch.rand(8, generator=g, dtype=torch.float64)
    t64 = t.double()
    s_end = torch.clamp(SCH.sigma(t64) - 0.05 * u, min=float(SCH.sigma(0))).minimum(SCH.sigma(t64))
    t_end = SCH.t_from_sigma(s_end).clamp(min=0.0).minimum(t64)
    x_t = SCH.q_sample(x0, t, noise)
    x_end = cdm.reverse_sde_chains(m, torch.cat([x_t, x_t]), torch.cat([t64, t64]), torch.cat([t_end, t_end]), SCH, 4, g)
    eps = m(torch.cat([x_t, x_end]), torch.cat([t, t_end.float(), t_end.float()]))
    ab = SCH.alpha_bar(torch.cat([t64, t_end, t_end]))
    h = cdm.x0_prediction(torch.cat([x_t, x_end]), eps, ab)
    c = 0.25 / (SCH.sigma(t64) ** 2 + 0.25)
    ref = (noise - eps[:8]).pow(2).mean(1) + 10.0 * c.float() * ((h[8:16] - h[:8]) * (h[16:] - h[:8])).mean(1)
    torch.testing.assert_close(ref, loss.detach(), rtol=1e-5, atol=1e-6)
    ref.mean().backward()
    for k, p in m.named_parameters():
        torch.testing.assert_close(p.grad, grads[k], rtol=1e-4, atol=1e-6)


def test_consistency_term_vanishes_for_an_exact_model_only():
    """The exact ε of Gaussian data is consistent (E[h(x′, t′) | x_t] = h(x_t, t)); a model whose implied
    data variance drifts with t is not. Means in units of their standard error (seeded, deterministic)."""
    n, s = 4000, 0.5
    x0 = s * torch.randn(n, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t = torch.randint(0, 150, (n,), generator=torch.Generator().manual_seed(1)).double()

    def drifting(x, tt):  # the Gaussian ε for a data std that grows with t: 0.2 … 1.2
        ab = SCH.alpha_bar(tt)[:, None]
        st = 0.2 + tt[:, None] / 150
        return torch.sqrt(1 - ab) * x / (ab * st**2 + 1 - ab)

    z = {}
    for name, m in (("exact", lambda x, tt: gaussian_eps(x, tt, SCH, s)), ("drifting", drifting)):
        parts = {}
        cdm.cdm_loss(m, x0, SCH, lam=1.0, dsigma=0.3, t=t, generator=torch.Generator().manual_seed(2), parts=parts)
        v = parts["consistency"]
        z[name] = float(v.mean() / (v.std() / n**0.5))
    assert abs(z["exact"]) < 3 and z["drifting"] > 4, z


def test_edm_weighting_and_bad_input():
    x0 = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    t = torch.full((64,), 800.0)  # σ ≈ 28: the weight c(σ) is small there
    m = lambda x, tt: 0.9 * gaussian_eps(x, tt, SCH, 1.0)  # noqa: E731
    p_edm, p_none = {}, {}
    cdm.cdm_loss(m, x0, SCH, lam=1.0, t=t, generator=torch.Generator().manual_seed(1), parts=p_edm)
    cdm.cdm_loss(m, x0, SCH, lam=1.0, t=t, weighting="none", generator=torch.Generator().manual_seed(1), parts=p_none)
    c = 0.25 / (float(SCH.sigma(800)) ** 2 + 0.25)
    torch.testing.assert_close(p_edm["consistency"], c * p_none["consistency"], rtol=1e-5, atol=1e-9)
    with pytest.raises(ValueError, match="weighting"):
        cdm.cdm_loss(m, x0, SCH, weighting="sigma")
    with pytest.raises(ValueError, match="lam >= 0"):
        cdm.cdm_loss(m, x0, SCH, lam=-1.0)


def test_cdm_arm_trains_through_lib_train_and_as_a_finetune(tmp_path):
    cfg = with_overrides(toy_config(get_config("ci")), {"train.steps": 4, "train.log_every": 2, "train.ckpt_every": 2,
                                                        "loss.cdm_steps": 2})
    base = train(cfg, "baseline", tmp_path / "base", progress=False)
    train(cfg, "cdm", tmp_path / "cdm_scratch", progress=False)
    lg = read_log(tmp_path / "cdm_scratch")
    assert lg["step"] == [2.0, 4.0]
    assert torch.isfinite(torch.tensor(lg["loss"] + lg["consistency"])).all() and any(v != 0 for v in lg["consistency"])
    assert not any(lg["lskip"])  # the CDM term is logged under its own name, not as S²-DM's L_skip
    # fine-tune: resume the baseline's newest checkpoint under the cdm arm
    assert rundir.seed(base.parent, tmp_path / "ft") == 4
    assert rundir.seed(base.parent, tmp_path / "ft") == -1  # already seeded: untouched
    train(with_overrides(cfg, {"train.steps": 6}), "cdm", tmp_path / "ft", progress=False)
    assert read_log(tmp_path / "ft")["step"] == [6.0]
    assert json.loads((tmp_path / "ft" / "run.json").read_text())["arm"] == "cdm"
    with pytest.raises(FileNotFoundError, match="no training checkpoint"):
        rundir.seed(tmp_path / "nothing", tmp_path / "ft2")


def test_seconds_per_step_measures_both_arms():
    cfg = with_overrides(toy_config(get_config("ci")), {"loss.cdm_steps": 2})
    b, c = seconds_per_step(cfg, "baseline", n_steps=2), seconds_per_step(cfg, "cdm", n_steps=2)
    assert 0 < b and 0 < c
