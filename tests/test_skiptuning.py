"""Skip-Tuning (lib/related/skiptuning.py): ρ linear in depth, ρ ≡ 1 is the plain UNet bit for bit, the base
model is never left modified, and the wrapper composes with every sampler."""
import pytest
import torch

from lib import samplers
from lib.infra.config import get_config
from lib.mlp import ToyMLP
from lib.schedule import linear_schedule
from lib.related.skiptuning import SkipTuned, rho_profile
from lib.unet import build_unet

SCH = linear_schedule()


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    net = build_unet(get_config("ci").model).eval()
    with torch.no_grad():  # a random but non-trivial network: perturb every parameter
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net


def batch(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g), torch.tensor([10.0, 200.0, 500.0, 990.0][:n])


def test_rho_profile_is_linear_from_top_to_bottom():
    r = rho_profile(7, 0.9, 0.6)
    assert r[0] == 0.9 and abs(r[-1] - 0.6) < 1e-15 and len(r) == 7
    d = [b - a for a, b in zip(r, r[1:])]
    assert all(abs(v - d[0]) < 1e-12 for v in d)
    assert rho_profile(1, 0.8, 0.5) == (0.8,)
    with pytest.raises(ValueError, match="rho_bottom"):
        rho_profile(4, 1.0, float("nan"))


def test_rho_one_is_the_plain_unet_bit_for_bit(unet):
    x, t = batch()
    with torch.no_grad():
        assert torch.equal(SkipTuned(unet, 1.0, 1.0)(x, t), unet(x, t))


def test_rho_changes_the_output_and_equals_setting_skip_rho_by_hand(unet):
    x, t = batch()
    st = SkipTuned(unet, 0.9, 0.7)
    with torch.no_grad():
        out = st(x, t)
        assert unet.skip_rho is None  # restored after the call
        unet.skip_rho = rho_profile(unet.num_skips, 0.9, 0.7)
        try:
            ref = unet(x, t)
        finally:
            unet.skip_rho = None
        assert torch.equal(out, ref) and not torch.equal(out, unet(x, t))


def test_base_model_is_restored_after_an_error(unet):
    st = SkipTuned(unet, 0.8, 0.8)
    unet.skip_rho = rho_profile(unet.num_skips, 1.0, 0.5)  # a value set by someone else
    before = unet.skip_rho
    try:
        with pytest.raises(Exception):
            st(torch.randn(2, 3, 8, 8), torch.zeros(2))  # wrong channel count: the UNet raises
        assert unet.skip_rho == before
    finally:
        unet.skip_rho = None


@pytest.mark.parametrize("method", ["ddim", "pndm", "ts-ddim", "heun", "restart"])
def test_composes_with_every_sampler(unet, method):
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    info, info1 = {}, {}
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    out = samplers.sample(SkipTuned(unet, 0.9, 0.8), x, SCH, 5, method, generator=g(), info=info)
    plain = samplers.sample(SkipTuned(unet, 1.0, 1.0), x, SCH, 5, method, generator=g(), info=info1)
    assert torch.equal(plain, samplers.sample(unet, x, SCH, 5, method, generator=g()))
    assert torch.isfinite(out).all() and not torch.equal(out, plain)
    assert info["nfe"] == info1["nfe"] == samplers.nfe(method, 5)
    assert unet.skip_rho is None


def test_models_without_skips_are_rejected():
    with pytest.raises(TypeError, match="skip connections"):
        SkipTuned(ToyMLP(), 0.9, 0.9)
