"""The ε-networks: the DDPM UNet (lib/unet.py) and the 2-D toy MLP (lib/mlp.py)."""
import dataclasses
import math

import numpy as np
import pytest
import torch

from lib.infra.config import get_config
from lib.mlp import ToyMLP, build_mlp
from lib.unet import AttnBlock, Downsample, Upsample, as_time, build_unet, num_groups, timestep_embedding


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def tiny_unet(seed=0, **kw):
    torch.manual_seed(seed)
    return build_unet(dataclasses.replace(get_config("ci").model, **kw)).eval()


# ---------------------------------------------------------------------------- architecture
def test_paper_unet_has_ddpm_cifar10_parameter_count_and_32_groups():
    with torch.device("meta"):
        net = build_unet(get_config("paper").model)
    assert n_params(net) == 35_746_307
    groups = {m.num_groups for m in net.modules() if isinstance(m, torch.nn.GroupNorm)}
    assert groups == {32}
    assert net.num_skips == 12  # conv_in + 4 levels x 2 blocks + 3 downsamples


def test_celeba64_unet_has_ddpm_parameter_count():
    cfg = dataclasses.replace(get_config("paper").model, ch_mult=(1, 2, 2, 2, 4), resolution=64)
    with torch.device("meta"):
        net = build_unet(cfg)
    assert n_params(net) == 78_700_803
    # attention stays at 16x16: level 2 of 64 -> 32 -> 16 -> 8 -> 4, plus the middle
    assert [len(level.attn) > 0 for level in net.down] == [False, False, True, False, False]


def test_state_dict_uses_reference_module_names():
    keys = set(tiny_unet().state_dict())
    for k in ("temb.dense.0.weight", "temb.dense.1.bias", "conv_in.weight", "down.0.block.0.norm1.weight",
              "down.0.downsample.conv.weight", "down.1.attn.0.q.weight", "mid.block_1.temb_proj.weight",
              "mid.attn_1.proj_out.weight", "up.0.block.1.nin_shortcut.weight", "up.1.upsample.conv.weight",
              "norm_out.weight", "conv_out.bias"):
        assert k in keys, k


@pytest.mark.parametrize("profile", ["ci", "cpu"])
def test_output_shape_for_profile(profile):
    cfg = get_config(profile).model
    torch.manual_seed(0)
    net = build_unet(cfg).eval()
    x = torch.randn(3, cfg.in_channels, cfg.resolution, cfg.resolution)
    with torch.no_grad():
        eps = net(x, torch.tensor([0.0, 12.25, 999.0]))
    assert eps.shape == x.shape and eps.dtype == x.dtype
    assert torch.isfinite(eps).all()


@pytest.mark.parametrize("profile", ["ci", "cpu"])
def test_small_models_keep_time_conditioning(profile):
    # temb enters as a per-channel shift before norm2; GroupNorm with one channel per group would
    # erase it exactly, so small models must keep several channels per group
    cfg = get_config(profile).model
    torch.manual_seed(0)
    net = build_unet(cfg).eval()
    assert all(m.num_channels // m.num_groups >= 4 for m in net.modules() if isinstance(m, torch.nn.GroupNorm))
    x = torch.randn(4, cfg.in_channels, cfg.resolution, cfg.resolution)
    t = torch.tensor([3.0, 100.0, 480.0, 900.0])
    with torch.no_grad():
        f0, f1 = net(x, t), net(x, 999.0 - t)
    assert (f1 - f0).norm() > 0.05 * f0.norm()


def test_group_count_rule():
    assert {c: num_groups(c) for c in (128, 256, 384, 512, 640, 768)} == dict.fromkeys((128, 256, 384, 512, 640, 768), 32)
    assert [num_groups(c) for c in (2, 8, 16, 24, 32, 48, 64, 96)] == [1, 2, 4, 6, 8, 12, 16, 24]


def test_resampling_layers_float64():
    torch.manual_seed(0)
    down = Downsample(3, with_conv=True).double()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    y = down(x)
    assert y.shape == (2, 3, 3, 3)
    w, b = down.conv.weight, down.conv.bias
    # DDPM pads right/bottom only: output (0, 0) sees input rows/cols 0..2, output (2, 2) rows/cols 4, 5, pad
    torch.testing.assert_close(y[:, :, 0, 0], torch.einsum("ocij,ncij->no", w, x[:, :, 0:3, 0:3]) + b)
    torch.testing.assert_close(y[:, :, 2, 2], torch.einsum("ocij,ncij->no", w[:, :, :2, :2], x[:, :, 4:, 4:]) + b)
    torch.testing.assert_close(Downsample(3, with_conv=False)(x), x.reshape(2, 3, 3, 2, 3, 2).mean((3, 5)))
    torch.testing.assert_close(Upsample(3, with_conv=False)(x),
                               x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3), rtol=0, atol=0)


def test_avgpool_resampling_variant_and_odd_channel_counts():
    net = tiny_unet(resamp_with_conv=False, ch=24)  # 24/48/72 channels: 6/12/18 groups
    assert not any("downsample.conv" in k for k in net.state_dict())
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert net(x, 5.0).shape == x.shape


def test_bad_arguments_are_rejected_with_clear_errors():
    cfg = get_config("ci").model
    with pytest.raises(ValueError, match="attn_resolutions"):
        build_unet(dataclasses.replace(cfg, attn_resolutions=(16,)))
    with pytest.raises(ValueError, match="divisible"):
        build_unet(dataclasses.replace(cfg, resolution=9))
    with pytest.raises(ValueError, match="mlp"):
        build_unet(dataclasses.replace(cfg, kind="mlp"))
    net = tiny_unet()
    with pytest.raises(ValueError, match="length N=2"):
        net(torch.randn(2, 1, 8, 8), torch.zeros(3))


# ---------------------------------------------------------------------------- time input
def test_timestep_embedding_matches_ddim_formula_float64():
    t = torch.tensor([0.0, 0.5, 1.0, 17.3, 250.0, 999.0], dtype=torch.float64)
    for dim in (16, 128, 33):
        half = dim // 2
        omega = np.exp(-np.arange(half) * math.log(10000.0) / (half - 1))
        arg = t.numpy()[:, None] * omega[None, :]
        ref = np.concatenate([np.sin(arg), np.cos(arg)] + ([np.zeros((len(t), 1))] if dim % 2 else []), axis=1)
        emb = timestep_embedding(t, dim)
        assert emb.dtype == torch.float64 and emb.shape == (len(t), dim)
        np.testing.assert_allclose(emb.numpy(), ref, rtol=0, atol=1e-12)
    # the float32 path (what the network uses) agrees to float32 accuracy
    np.testing.assert_allclose(timestep_embedding(t.float(), 128).double().numpy(),
                               timestep_embedding(t, 128).numpy(), atol=2e-4)


def test_timestep_embedding_is_continuous_in_t():
    # every component is sin/cos(ω t) with ω <= 1, so it is 1-Lipschitz in t
    t = torch.linspace(0, 999, 101, dtype=torch.float64)
    for d in (1e-6, 1e-3, 0.5):
        diff = (timestep_embedding(t + d, 128) - timestep_embedding(t, 128)).abs()
        assert diff.max() <= d * (1 + 1e-9) and diff.max() > 0.1 * d


def test_unet_accepts_fractional_t_and_is_continuous_in_it():
    # float64 so that the small-step difference is far above rounding noise
    net = tiny_unet().double()
    torch.manual_seed(1)
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    t = torch.tensor([3.0, 100.0, 480.0, 900.0], dtype=torch.float64)
    with torch.no_grad():
        f0, f_small, f_half = net(x, t), net(x, t + 1e-3), net(x, t + 0.5)
    d_small, d_half = (f_small - f0).norm(), (f_half - f0).norm()
    assert d_half > 0  # the fractional part is seen, not rounded away
    assert d_small < 0.02 * d_half  # a thousandth of the step moves the output ~a thousandth as far


def test_time_argument_forms_agree():
    net = tiny_unet()
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        ref = net(x, torch.tensor([7.0, 7.0]))
        assert torch.equal(net(x, 7), ref)
        assert torch.equal(net(x, 7.0), ref)
        assert torch.equal(net(x, torch.tensor(7)), ref)
        assert torch.equal(net(x, torch.tensor([7, 7])), ref)
    assert as_time(2.5, 3, "cpu").tolist() == [2.5, 2.5, 2.5]


# ---------------------------------------------------------------------------- attention
def test_attention_equals_explicit_softmax_float64():
    torch.manual_seed(0)
    blk = AttnBlock(8).double()
    with torch.no_grad():  # non-trivial GroupNorm affine so every path matters
        blk.norm.weight.uniform_(0.5, 1.5)
        blk.norm.bias.uniform_(-0.5, 0.5)
    x = torch.randn(2, 8, 3, 5, dtype=torch.float64)
    h = blk.norm(x)
    q, k, v = (m(h).flatten(2) for m in (blk.q, blk.k, blk.v))  # [B, C, HW]
    w = torch.softmax(torch.einsum("bci,bcj->bij", q, k) / math.sqrt(8), dim=2)  # w[b, query, key]
    a = torch.einsum("bij,bcj->bci", w, v).reshape(x.shape)
    ref = x + blk.proj_out(a)
    torch.testing.assert_close(blk(x), ref, rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------- performance modes
def test_channels_last_matches_contiguous():
    net = tiny_unet()
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([4.0, 300.0])
    with torch.no_grad():
        ref = net(x, t)
        net_cl = net.to(memory_format=torch.channels_last)
        out = net_cl(x.contiguous(memory_format=torch.channels_last), t)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_bf16_autocast_forward_and_backward():
    net = tiny_unet().train()
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([4.5, 300.0])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        eps = net(x, t)
        loss = (eps.float() - x).pow(2).mean()
    loss.backward()
    assert eps.shape == x.shape and torch.isfinite(eps).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


# ---------------------------------------------------------------------------- toy MLP
def test_toy_mlp_shapes_and_builders():
    torch.manual_seed(0)
    net = ToyMLP(dim=2, hidden=32, depth=3, temb_dim=16)
    x = torch.randn(5, 2)
    assert net(x, torch.linspace(0, 999, 5)).shape == (5, 2)
    assert net(x, 3.5).shape == (5, 2)
    assert len(net.layers) == 3
    for cfg in (get_config("ci").model, get_config("ci").toy):
        m = build_mlp(cfg)
        assert m.layers[0].out_features == cfg.hidden and len(m.layers) == cfg.depth
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        net(torch.randn(5, 3), 1.0)


def test_toy_mlp_sees_t_and_trains():
    torch.manual_seed(0)
    net = ToyMLP(hidden=64, depth=2, temb_dim=32)
    x = torch.randn(256, 2)
    t = torch.rand(256) * 999
    with torch.no_grad():
        assert (net(x, t) - net(x, t + 0.5)).abs().max() > 0
    target = torch.stack([torch.sin(x[:, 0]) * torch.cos(t / 300), x[:, 1] * (t / 999)], dim=1)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(300):
        loss = (net(x, t) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]
