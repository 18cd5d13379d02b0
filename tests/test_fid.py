"""Inception FID wrapper: clear offline errors, and the full clean-fid path with a stand-in extractor."""
import urllib.request

import pytest
import torch
import torch.nn as nn

from lib.measure import fid


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*a, **k):
        pytest.fail("clean-fid tried to download something")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


@pytest.fixture
def empty_dirs(tmp_path, monkeypatch):
    w, s = tmp_path / "weights", tmp_path / "stats"
    w.mkdir()
    s.mkdir()
    monkeypatch.setattr(fid, "INCEPTION_DIR", str(w))
    monkeypatch.setattr(fid, "STATS_DIR", str(s))
    return w, s


def _images(n, seed, shift=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 200, (n, 3, 32, 32), generator=g) + shift
    return x.clamp(0, 255).to(torch.uint8)


def test_stats_filename_follows_cleanfid():
    assert fid.stats_filename("cifar10", "legacy_tensorflow", 32, "train") == "cifar10_legacy_tensorflow_train_32.npz"
    assert fid.stats_filename("MyData", "clean", 64, "custom") == "mydata_clean_custom_na.npz"


def test_offline_error_names_files_and_urls(empty_dirs, no_network):
    w, s = empty_dirs
    with pytest.raises(fid.FIDWeightsMissing) as e:
        fid.inception_fid(_images(4, 0), dataset="cifar10", dataset_res=32, split="train", device="cpu")
    msg = str(e.value)
    assert str(w / "inception-2015-12-05.pt") in msg and fid.INCEPTION_URL in msg
    assert fid.INCEPTION_URL.startswith("https://") and fid.INCEPTION_URL.endswith("inception-2015-12-05.pt")
    assert str(s / "cifar10_legacy_tensorflow_train_32.npz") in msg
    assert "https://www.cs.cmu.edu/~clean-fid/stats/cifar10_legacy_tensorflow_train_32.npz" in msg
    # weights in place: only the statistics are reported
    (w / "inception-2015-12-05.pt").write_bytes(b"")
    with pytest.raises(fid.FIDWeightsMissing) as e:
        fid.check_offline("clean", "cifar10", 32, "test")
    assert "cifar10_clean_test_32.npz" in str(e.value) and "inception-2015-12-05.pt" not in str(e.value)


def test_bad_arguments():
    with pytest.raises(ValueError, match="legacy_tensorflow, clean"):
        fid.check_offline("legacy_pytorch")
    with pytest.raises(ValueError, match="ref_images"):
        fid.inception_fid(_images(4, 0), feat_extractor=lambda x: x)
    with pytest.raises(TypeError, match="uint8"):
        fid.inception_fid(torch.zeros(4, 3, 8, 8), feat_extractor=lambda x: x, ref_images=_images(4, 0))


class StandIn(nn.Module):
    """A fixed random conv net: images in [0, 255] (any size, pooled to 32×32 first) -> 16 features."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 16, 5, stride=2)

    @torch.no_grad()
    def forward(self, x):
        x = nn.functional.adaptive_avg_pool2d(x, 32)  # keeps the 299×299 input of clean mode cheap
        return torch.tanh(self.conv(x / 127.5 - 1)).mean((2, 3))


@pytest.mark.parametrize("mode", ["legacy_tensorflow", "clean"])
def test_full_cleanfid_path_with_stand_in(mode, empty_dirs, no_network, tmp_path):
    net = StandIn()
    seen = []

    def extractor(x):
        seen.append(tuple(x.shape))
        return net(x)

    ref = _images(64, 1)
    kw = dict(mode=mode, device="cpu", batch_size=32, num_workers=0, feat_extractor=extractor)
    same = fid.inception_fid(ref.clone(), ref_images=ref, **kw)
    shifted = fid.inception_fid(_images(64, 2, shift=50), ref_images=ref, **kw)
    assert abs(same) < 1e-8 and shifted > 0.01
    # clean mode resizes to 299×299 outside the network; legacy_tensorflow hands over 32×32
    assert seen[0][1:] == ((3, 299, 299) if mode == "clean" else (3, 32, 32))
    if mode == "clean":  # clean-fid's 299×299 float pipeline is slow on CPU: two calls are enough
        return
    other = fid.inception_fid(_images(64, 2), ref_images=ref, **kw)  # same distribution, other draw
    assert 0 < other and shifted > 10 * other
    # a folder of PNGs is accepted as it is
    folder = tmp_path / "pngs"
    fid._as_folder(_images(64, 2), folder)
    assert fid.inception_fid(str(folder), ref_images=ref, **kw) == pytest.approx(other, rel=1e-9)


def test_features_and_reference_stats_feed_the_bootstrap(tmp_path, monkeypatch):
    """The gpu-profile path: clean-fid features of generated images, bootstrapped against stored (μ, Σ)."""
    import numpy as np
    import torch

    from lib.measure import fid, metrics

    g = torch.Generator().manual_seed(0)
    conv = torch.nn.Conv2d(3, 8, 3, stride=2)
    extractor = lambda x: conv(x / 255.0).mean((2, 3)).detach()
    imgs = torch.randint(0, 256, (40, 3, 16, 16), generator=g, dtype=torch.uint8)
    f = fid.inception_features(imgs, mode="clean", device="cpu", feat_extractor=extractor)
    assert f.shape == (40, 8) and np.isfinite(f).all()
    stats_dir = tmp_path / "stats"
    stats_dir.mkdir()
    name = fid.stats_filename("cifar10", "clean", 32, "train")
    np.savez(stats_dir / name, mu=f.mean(0), sigma=np.cov(f, rowvar=False))
    monkeypatch.setattr(fid, "STATS_DIR", str(stats_dir))
    mu, sigma = fid.reference_stats("cifar10", 32, "train", "clean")
    b = metrics.fd_bootstrap(f, (mu, sigma), n_boot=20)
    assert abs(b["value"]) < 1e-6 and b["value"] == pytest.approx(metrics.fd_from_features(f, f), abs=1e-9)
