"""Skip-Tuning (lib/related/skiptuning.py): ρ linear in depth, ρ ≡ 1 is the plain UNet bit for bit, the base
model is never left modified, and the wrapper composes with every sampler."""
import pytest
import torch

from lib import samplers
from lib.infra.config import get_config
from lib.mlp import ToyMLP
from lib.schedule import linear_schedule
from lib.related.skiptuning import SkipTuned, decoder_blocks, rho_profile
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


def _skip_inputs(model, unet, x, t):
    """The skip part of every decoder block's input (in the order the forward runs them) for ``model``."""
    seen, handles = [], []
    for n, block in enumerate(decoder_blocks(unet)):
        width = unet.skip_channels[unet.num_skips - 1 - n]
        # a forward hook sees the input as the block received it (after any pre-hook)
        handles.append(block.register_forward_hook(lambda _m, args, _out, w=width: seen.append(args[0][:, -w:].clone())))
    try:
        out = model(x, t)
    finally:
        for h in handles:
            h.remove()
    return out, seen


def test_rho_scales_each_skip_where_the_decoder_receives_it(unet):
    """Block n of the decoder receives concat(h, ρ_k · skip_k), k = num_skips − 1 − n (the encoder is untouched)."""
    x, t = batch()
    with torch.no_grad():
        out, tuned = _skip_inputs(SkipTuned(unet, 0.9, 0.7), unet, x, t)
        plain_out, plain = _skip_inputs(unet, unet, x, t)
    rho = rho_profile(unet.num_skips, 0.9, 0.7)
    assert len(tuned) == len(plain) == unet.num_skips
    for n, (a, b) in enumerate(zip(tuned, plain)):
        assert torch.equal(a, b * rho[unet.num_skips - 1 - n]), n
    assert not torch.equal(out, plain_out)


def _no_hooks_left(unet):
    return all(not b._forward_pre_hooks for b in decoder_blocks(unet))


def test_base_model_is_restored_after_an_error(unet):
    st = SkipTuned(unet, 0.8, 0.8)
    x, t = batch()
    with torch.no_grad():
        before = unet(x, t)
        with pytest.raises(RuntimeError):
            st(torch.randn(2, 3, 8, 8), torch.zeros(2))  # wrong channel count: the UNet raises
        assert _no_hooks_left(unet) and torch.equal(unet(x, t), before)


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
    assert _no_hooks_left(unet)


def test_skip_order_outermost_first(unet):
    """ρ_0 scales the conv_in output (outermost, consumed last), ρ_{K−1} the innermost skip (consumed first)."""
    assert unet.num_skips == 4  # ci: skips 0 conv_in, 1 down0.block0, 2 downsample, 3 down1.block0+attn
    seen = {}
    hooks = [
        unet.conv_in.register_forward_hook(lambda m, i, o: seen.__setitem__("outer", o)),
        unet.down[1].attn[0].register_forward_hook(lambda m, i, o: seen.__setitem__("inner", o)),
        # forward hooks see the decoder blocks' input as received (after Skip-Tuning's pre-hooks)
        unet.up[0].block[1].register_forward_hook(lambda m, a, o: seen.__setitem__("in_outer", a[0])),
        unet.up[1].block[0].register_forward_hook(lambda m, a, o: seen.__setitem__("in_inner", a[0])),
    ]
    st = SkipTuned(unet)
    st.rho = (0.5, 1.0, 1.0, 0.25)
    try:
        with torch.no_grad():
            st(torch.randn(2, 1, 8, 8), torch.tensor([10.0, 600.0]))
    finally:
        for h in hooks:
            h.remove()
    torch.testing.assert_close(seen["in_outer"][:, -16:], 0.5 * seen["outer"])
    torch.testing.assert_close(seen["in_inner"][:, -32:], 0.25 * seen["inner"])


def test_models_without_skips_are_rejected():
    with pytest.raises(TypeError, match="skip connections"):
        SkipTuned(ToyMLP(), 0.9, 0.9)
