"""Pretrained weights (lib/pretrained/), offline: a diffusers UNet2DModel in google/ddpm-cifar10-32's
configuration loads and computes diffusers' own forward; the DDIM code's checkpoint layouts round-trip;
corrupt files, wrong architectures, unknown names and missing checkpoints give clear errors; the
fine-tune hook records its source."""
import json

import pytest
import torch

from lib import pretrained
from lib.infra.config import ModelConfig
from lib.unet import UNet, build_unet

# google/ddpm-cifar10-32's UNet2DModel configuration (35,746,307 parameters, like ours).
DDPM_CIFAR10 = dict(sample_size=32, in_channels=3, out_channels=3, layers_per_block=2,
                    block_out_channels=(128, 256, 256, 256),
                    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
                    freq_shift=1, flip_sin_to_cos=False, downsample_padding=0, norm_eps=1e-6, norm_num_groups=32,
                    attention_head_dim=None, dropout=0.0)
CIFAR_CFG = ModelConfig()  # the DDIM code's CIFAR-10 model


@pytest.fixture(scope="module")
def diffusers_folder(tmp_path_factory):
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    ref = UNet2DModel(**DDPM_CIFAR10).eval()
    with torch.no_grad():  # diffusers zero-initialises nothing relevant, but make every weight non-trivial
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    folder = tmp_path_factory.mktemp("ddpm-cifar10-32")
    ref.save_pretrained(folder)
    return folder, ref


def test_diffusers_unet2d_loads_and_matches_its_forward(diffusers_folder):
    """Tolerance: float32, max |ours − diffusers| ≤ 2e-5 on outputs of magnitude ~2 (two implementations of
    the same float32 arithmetic, attention through different kernels); measured 3–5e-6 on CPU."""
    folder, ref = diffusers_folder
    model, cfg = pretrained.load_unet(str(folder))
    assert not model.training and model.norm_groups == 32
    assert (cfg.ch, cfg.ch_mult, cfg.num_res_blocks, cfg.attn_resolutions, cfg.resolution) == (128, (1, 2, 2, 2), 2, (16,), 32)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in ref.parameters()) == 35_746_307
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 32, 32, generator=g)
    for t in (torch.tensor([0.0, 999.0]), torch.tensor([17.0, 503.0]), torch.tensor([0.25, 640.5])):
        with torch.no_grad():
            want = ref(x, t).sample
            got = model(x, t)
        assert (got - want).abs().max() < 2e-5, (t, float((got - want).abs().max()))
    # the t dependence is real (not a constant network), so the comparison at several t has teeth
    with torch.no_grad():
        assert (model(x, torch.tensor([10.0, 10.0])) - model(x, torch.tensor([900.0, 900.0]))).abs().max() > 1e-3


def test_a_config_this_unet_cannot_represent_is_refused_naming_the_field(diffusers_folder, tmp_path):
    folder, _ = diffusers_folder
    for field, value in [("flip_sin_to_cos", True), ("attention_head_dim", 8), ("act_fn", "gelu"),
                         ("norm_eps", 1e-5), ("down_block_types", ["DownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D", "DownBlock2D"])]:
        bad = tmp_path / field
        bad.mkdir()
        c = json.loads((folder / "config.json").read_text())
        c[field] = value
        (bad / "config.json").write_text(json.dumps(c))
        for f in folder.iterdir():
            if f.name != "config.json":
                (bad / f.name).symlink_to(f)
        with pytest.raises(pretrained.PretrainedError, match=field):
            pretrained.load_unet(str(bad))


def _small_ref(seed=0):
    """A small reference-style model: ch 64, where our rule would give 16 groups but the reference code 32."""
    torch.manual_seed(seed)
    return UNet(in_channels=3, out_ch=3, resolution=32, ch=64, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(16,),
                dropout=0.0, norm_groups=32).eval()


def test_ddim_code_layouts_round_trip(tmp_path):
    ref = _small_ref()
    ema = _small_ref(seed=1)
    sd, sd_ema = ref.state_dict(), ema.state_dict()
    # a plain state dict (the released DDPM checkpoints)
    torch.save(sd, tmp_path / "model-790000.ckpt")
    m, cfg = pretrained.load_unet(tmp_path / "model-790000.ckpt")
    assert m.norm_groups == 32 and cfg.ch == 64 and cfg.ch_mult == (1, 2) and cfg.attn_resolutions == (16,)
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([3.0, 700.0])
    with torch.no_grad():
        assert torch.equal(m(x, t), ref(x, t))
    # the DDIM code's training ckpt.pth: [model (DataParallel 'module.' keys), optimizer, epoch, step, ema]
    torch.save([{f"module.{k}": v for k, v in sd.items()}, {"state": {}}, 3, 1234, sd_ema], tmp_path / "ckpt.pth")
    m_ema, _ = pretrained.load_unet(tmp_path / "ckpt.pth")  # the EMA entry by default
    m_raw, _ = pretrained.load_unet(tmp_path / "ckpt.pth", entry="model")
    with torch.no_grad():
        assert torch.equal(m_ema(x, t), ema(x, t)) and torch.equal(m_raw(x, t), ref(x, t))
    # 32 groups matter here: this project's rule gives ch 64 16 groups, and the outputs differ
    ours = UNet(in_channels=3, out_ch=3, resolution=32, ch=64, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(16,),
                dropout=0.0)
    ours.load_state_dict(sd)
    with torch.no_grad():
        assert (ours.eval()(x, t) - ref(x, t)).abs().max() > 1e-4
    with pytest.raises(pretrained.PretrainedError, match="GroupNorm groups"):
        pretrained.init_weights(ours, tmp_path / "model-790000.ckpt")


def test_the_cifar10_reference_architecture_is_inferred_exactly(tmp_path):
    model = build_unet(CIFAR_CFG)  # widths 128/256: our rule gives 32 groups, as the reference
    torch.save(model.state_dict(), tmp_path / "w.ckpt")
    m, cfg = pretrained.load_unet(tmp_path / "w.ckpt")
    for k in ("in_channels", "out_ch", "resolution", "ch", "ch_mult", "num_res_blocks", "attn_resolutions", "resamp_with_conv"):
        assert getattr(cfg, k) == getattr(CIFAR_CFG, k), k
    info = pretrained.init_weights(build_unet(CIFAR_CFG), tmp_path / "w.ckpt")
    assert info["md5"] == pretrained.file_md5(tmp_path / "w.ckpt") and info["layout"] == "state_dict"


def test_corrupt_files_wrong_architectures_and_unknown_names_give_clear_errors(tmp_path):
    ref = _small_ref()
    torch.save(ref.state_dict(), tmp_path / "good.ckpt")
    data = (tmp_path / "good.ckpt").read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(pretrained.PretrainedError, match="truncated"):
        pretrained.load_unet(tmp_path / "cut.ckpt")
    sd = dict(ref.state_dict())
    sd["down.0.block.0.extra.weight"] = torch.zeros(3)
    torch.save(sd, tmp_path / "extra.ckpt")
    with pytest.raises(pretrained.PretrainedError, match="unknown name"):
        pretrained.load_unet(tmp_path / "extra.ckpt")
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "mlp.ckpt")
    with pytest.raises(pretrained.PretrainedError, match="not a DDPM/DDIM UNet"):
        pretrained.load_unet(tmp_path / "mlp.ckpt")
    wrong = UNet(in_channels=3, out_ch=3, resolution=32, ch=64, ch_mult=(1, 1), num_res_blocks=1,
                 attn_resolutions=(16,), dropout=0.0, norm_groups=32)
    with pytest.raises(pretrained.PretrainedError, match="shape mismatch"):
        pretrained.init_weights(wrong, tmp_path / "good.ckpt")
    with pytest.raises(pretrained.PretrainedMissing, match="known names"):
        pretrained.load_unet(tmp_path / "nothing-here.ckpt")


def test_a_missing_named_checkpoint_says_where_to_put_it_and_where_to_get_it(tmp_path):
    with pytest.raises(pretrained.PretrainedMissing) as e:
        pretrained.load_unet("ema_cifar10", root=tmp_path)
    msg = str(e.value)
    assert str(tmp_path / "data" / "pretrained" / "ema_cifar10") in msg
    assert "python -m lib.pretrained fetch ema_cifar10" in msg and "1fa350b952534ae442b1d5235cce5cd3" in msg
    assert pretrained.main(["fetch", "no-such-model", "--root", str(tmp_path)]) == 2


def test_a_named_checkpoint_in_place_is_checked_against_its_md5(tmp_path):
    where = tmp_path / "data" / "pretrained" / "ema_cifar10" / "model-790000.ckpt"
    where.parent.mkdir(parents=True)
    torch.save(build_unet(CIFAR_CFG).state_dict(), where)  # right architecture, but not the released file
    with pytest.raises(pretrained.PretrainedError, match="MD5"):
        pretrained.load_unet("ema_cifar10", root=tmp_path)
    with pytest.raises(pretrained.PretrainedError, match="MD5"):
        pretrained.init_weights(build_unet(CIFAR_CFG), "ema_cifar10", root=tmp_path)
    m, cfg = pretrained.load_unet(where)  # the same file by path: no published checksum applies
    assert cfg.resolution == 32 and m.norm_groups == 32


def test_train_init_from_starts_both_arms_from_the_same_weights_and_records_it(tmp_path):
    from lib.infra.config import get_config
    from lib.train import train

    cfg = get_config("ci", ["train.steps=2", "train.ckpt_every=1", "train.log_every=1"])
    src = train(cfg, "baseline", tmp_path / "src", progress=False).parent
    runs = {}
    for arm in ("baseline", "s2dm"):
        runs[arm] = train(cfg, arm, tmp_path / arm, progress=False, init_from=str(src)).parent
        rec = json.loads((runs[arm] / "run.json").read_text())["init_from"]
        assert rec["source"] == str(src) and rec["md5"] == pretrained.file_md5(src / "final.pt")
    # step 1 of both arms starts from the source's EMA weights: the checkpoints at step 1 differ from a fresh start
    fresh = train(cfg, "baseline", tmp_path / "fresh", progress=False).parent
    a = torch.load(runs["baseline"] / "final.pt")
    b = torch.load(fresh / "final.pt")
    assert any(not torch.equal(a[k], b[k]) for k in a)
    # resuming a finished init-from run is a no-op, and the record stays
    train(cfg, "baseline", tmp_path / "baseline", progress=False, init_from=str(src))
    assert json.loads((runs["baseline"] / "run.json").read_text())["init_from"]["source"] == str(src)


def test_fetch_verifies_the_checksum_keeps_nothing_bad_and_skips_what_is_in_place(tmp_path, monkeypatch):
    """Offline: a file:// URL stands in for the download server."""
    src = tmp_path / "served.ckpt"
    torch.save(_small_ref().state_dict(), src)
    good = dict(pretrained.CHECKPOINTS["ema_cifar10"], url=src.as_uri(), md5=pretrained.file_md5(src))
    monkeypatch.setitem(pretrained.CHECKPOINTS, "ema_cifar10", good)
    root = tmp_path / "repo"
    dest = pretrained.fetch("ema_cifar10", root)
    assert dest == root / "data" / "pretrained" / "ema_cifar10" / "model-790000.ckpt"
    assert pretrained.file_md5(dest) == good["md5"]
    mtime = dest.stat().st_mtime_ns
    assert pretrained.fetch("ema_cifar10", root) == dest and dest.stat().st_mtime_ns == mtime  # skipped
    model, _ = pretrained.load_unet("ema_cifar10", root=root)
    assert pretrained.init_weights(model, "ema_cifar10", root=root)["md5"] == good["md5"]
    # a wrong checksum: refused, and neither the file nor a partial download is kept
    monkeypatch.setitem(pretrained.CHECKPOINTS, "ema_cifar10", dict(good, md5="0" * 32))
    other = tmp_path / "other"
    with pytest.raises(pretrained.PretrainedError, match="MD5"):
        pretrained.fetch("ema_cifar10", other)
    assert not any((other / "data" / "pretrained" / "ema_cifar10").glob("*"))
    # an unreachable server: the message says where to place the file
    monkeypatch.setitem(pretrained.CHECKPOINTS, "ema_cifar10", dict(good, url=(tmp_path / "gone").as_uri()))
    with pytest.raises(pretrained.PretrainedMissing, match="place it at"):
        pretrained.fetch("ema_cifar10", tmp_path / "third")


def test_train_cli_init_from_errors_are_one_line(tmp_path, capsys):
    from lib import train as train_mod

    assert train_mod.main(["--profile", "ci", "--arm", "baseline", "--out", str(tmp_path / "r"), "--quiet",
                           "--init-from", str(tmp_path / "missing.ckpt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "known checkpoint name" in err and "Traceback" not in err
    torch.save(_small_ref().state_dict(), tmp_path / "other.ckpt")  # a model of another architecture
    assert train_mod.main(["--profile", "ci", "--arm", "baseline", "--out", str(tmp_path / "r2"), "--quiet",
                           "--init-from", str(tmp_path / "other.ckpt")]) == 2
    assert "error: " in capsys.readouterr().err
