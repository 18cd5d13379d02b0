"""Datasets: toy GMM densities and moments, image loaders on local fixtures, missing-data errors."""
import pickle
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from lib import data, readers
from lib.infra.config import DataConfig


def cfg(**kw):
    return replace(DataConfig(), **kw)


# ---------------------------------------------------------------------------- toy GMMs
@pytest.mark.parametrize("name", data.TOY_DATASETS)
def test_gmm_density_integrates_to_one(name):
    gmm = data.toy_distribution(name)
    h = 0.025  # Riemann sums of a Gaussian with std 0.1 are accurate far beyond 1e-6 at this step
    g = torch.arange(-3.5, 3.5, h, dtype=torch.float64)
    grid = torch.cartesian_prod(g, g)
    mass = gmm.log_prob(grid).exp().sum().item() * h * h
    assert gmm.log_prob(grid).dtype == torch.float64
    assert abs(mass - 1.0) < 1e-6


@pytest.mark.parametrize("name", data.TOY_DATASETS)
def test_gmm_sample_moments_match_exact(name):
    gmm = data.toy_distribution(name)
    x = gmm.sample(200_000, generator=torch.Generator().manual_seed(0))
    assert x.dtype == torch.float32 and x.shape == (200_000, gmm.dim) and gmm.dim == 2
    x = x.double()
    # standard errors: sqrt(2.01 / n) ≈ 0.003 for the mean, ~0.01 for the covariance entries
    assert torch.allclose(x.mean(0), gmm.mean(), atol=0.015)
    assert torch.allclose(torch.cov(x.T), gmm.cov(), atol=0.03)
    assert torch.allclose(gmm.cov(), 2.01 * torch.eye(2, dtype=torch.float64), atol=1e-12)


def test_gmm_log_prob_single_component_is_gaussian():
    gmm = data.GMM(means=torch.tensor([[1.0, -2.0]]), std=0.5, weights=torch.tensor([3.0]))
    x = torch.tensor([[0.0, 0.0], [1.0, -2.0]], dtype=torch.float64)
    ref = torch.distributions.MultivariateNormal(gmm.means[0], 0.25 * torch.eye(2, dtype=torch.float64)).log_prob(x)
    assert torch.allclose(gmm.log_prob(x), ref, atol=1e-12)
    assert float(gmm.weights.sum()) == 1.0


def test_gmm_sampling_is_deterministic_under_generator():
    gmm = data.toy_distribution("grid25")
    a = gmm.sample(100, torch.Generator().manual_seed(3))
    b = gmm.sample(100, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_unknown_toy_and_dataset_names():
    with pytest.raises(ValueError, match="ring8"):
        data.toy_distribution("moons")
    with pytest.raises(ValueError, match="digits.*mnist.*cifar10.*celeba.*sampled.*ring8.*grid25"):
        data.load_images(cfg(dataset="imagenet"))
    with pytest.raises(ValueError, match="sampled"):
        data.load_images(cfg(dataset="ring8"))


# ---------------------------------------------------------------------------- range helpers
def test_model_range_round_trip_is_exact():
    u = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    x = data.to_model_range(u)
    assert x.dtype == torch.float32 and x.min() == -1 and x.max() == 1
    assert torch.equal(data.from_model_range(x), u)
    assert torch.equal(data.from_model_range(torch.tensor([-3.0, 5.0])), torch.tensor([0, 255], dtype=torch.uint8))


def test_random_flip_deterministic_and_per_sample():
    x = torch.arange(64 * 2 * 3 * 4).view(64, 2, 3, 4)
    a = data.random_flip(x, torch.Generator().manual_seed(0))
    b = data.random_flip(x, torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    flipped = [torch.equal(a[i], x[i].flip(-1)) for i in range(64)]
    kept = [torch.equal(a[i], x[i]) for i in range(64)]
    assert all(f != k for f, k in zip(flipped, kept))  # each sample either flipped or kept
    assert 16 < sum(flipped) < 48


# ---------------------------------------------------------------------------- digits / mnist
def test_digits_shape_range_and_size():
    x, y = data.load_images(cfg(dataset="digits", image_size=8))
    assert x.shape == (1797, 1, 8, 8) and x.dtype == torch.uint8 and x.max() == 255 and x.min() == 0
    assert y.dtype == torch.int64 and set(y.tolist()) == set(range(10))
    x16, _ = data.load_images(cfg(dataset="digits", image_size=16, n_train=100))
    assert x16.shape == (100, 1, 16, 16) and x16.dtype == torch.uint8


def test_mnist_is_shuffled_fixed_and_cut():
    x, y = data.load_images(cfg(dataset="mnist", image_size=28))
    assert x.shape == (5000, 1, 28, 28) and x.dtype == torch.uint8 and int(x.max()) == 255
    assert torch.bincount(y).tolist() == [500] * 10
    assert not bool((y[1:] >= y[:-1]).all())  # no longer sorted by label
    assert len(set(y[:50].tolist())) >= 8  # the first 50 already span the classes
    x2, y2 = data.load_images(cfg(dataset="mnist", image_size=16, n_train=300))
    assert x2.shape == (300, 1, 16, 16)
    assert torch.equal(y2, y[:300])  # the same fixed order, then the first n
    with pytest.raises(ValueError, match="test split"):
        data.load_images(cfg(dataset="mnist"), train=False)


def test_resize_uint8_matches_antialiased_bilinear():
    x = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    y = readers.resize_uint8(x, 14)
    ref = torch.nn.functional.interpolate(x.double(), size=(14, 14), mode="bilinear", antialias=True)
    assert y.dtype == torch.uint8 and (y.double() - ref).abs().max() <= 0.5 + 1e-4
    assert readers.resize_uint8(x, 28) is x


# ---------------------------------------------------------------------------- CIFAR-10 fixture
def _write_fake_cifar(root, n_per_batch=3):
    folder = root / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    images, labels = [], []
    for name in readers.CIFAR10_TRAIN_FILES + readers.CIFAR10_TEST_FILES:
        img = rng.integers(0, 256, (n_per_batch, 32, 32, 3), dtype=np.uint8)  # HWC, as a photo would be
        lab = rng.integers(0, 10, n_per_batch).tolist()
        # the CIFAR layout: per row the R plane, then G, then B, each 32×32 row-major
        rows = img.transpose(0, 3, 1, 2).reshape(n_per_batch, 3072)
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": rows, b"labels": lab, b"batch_label": name.encode()}, f)
        images.append(img)
        labels.append(lab)
    return folder, images, labels


def test_cifar10_round_trip_from_pickles(tmp_path):
    _, images, labels = _write_fake_cifar(tmp_path)
    x, y = readers.load_cifar10(tmp_path, train=True)
    ref = np.concatenate(images[:5]).transpose(0, 3, 1, 2)
    assert x.shape == (15, 3, 32, 32) and x.dtype == torch.uint8
    assert np.array_equal(x.numpy(), ref)
    assert y.tolist() == sum(labels[:5], []) and y.dtype == torch.int64
    # a red pixel stays red: channel 0 is R
    assert int(x[0, 0, 0, 0]) == int(images[0][0, 0, 0, 0]) and int(x[0, 2, 5, 7]) == int(images[0][0, 5, 7, 2])
    xt, yt = readers.load_cifar10(tmp_path, train=False)
    assert np.array_equal(xt.numpy(), images[5].transpose(0, 3, 1, 2)) and yt.tolist() == labels[5]


def test_cifar10_through_load_images_shuffles_and_cuts(tmp_path):
    _write_fake_cifar(tmp_path)
    raw, raw_y = readers.load_cifar10(tmp_path)
    x, y = data.load_images(cfg(dataset="cifar10", root=str(tmp_path), image_size=32, n_train=5))
    perm = np.random.default_rng(0).permutation(15)[:5]
    assert torch.equal(x, raw[perm]) and torch.equal(y, raw_y[perm])
    x16, _ = data.load_images(cfg(dataset="cifar10", root=str(tmp_path), image_size=16))
    assert x16.shape == (15, 3, 16, 16)


def test_cifar10_missing_message(tmp_path):
    with pytest.raises(data.DatasetMissing) as e:
        data.load_images(cfg(dataset="cifar10", root=str(tmp_path)))
    msg = str(e.value)
    assert str((tmp_path / "cifar10" / "cifar-10-batches-py").resolve()) in msg
    assert "data_batch_1" in msg and "test_batch" in msg
    assert "data.download=true" in msg and readers.CIFAR10_URL in msg


def test_cifar10_download_failure_is_wrapped(tmp_path, monkeypatch):
    import torchvision

    def boom(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", boom)
    with pytest.raises(data.DatasetMissing, match="download failed.*network unreachable") as e:
        data.load_images(cfg(dataset="cifar10", root=str(tmp_path), download=True))
    assert readers.CIFAR10_URL in str(e.value)


# ---------------------------------------------------------------------------- CelebA fixture
def test_celeba_crop_geometry_exact():
    # pixel (row r, col c) carries R = r, G = c: the crop must start at row 57, column 25.
    r, c = np.meshgrid(np.arange(218), np.arange(178), indexing="ij")
    arr = np.stack([r, c, np.zeros_like(r)], axis=-1).astype(np.uint8)
    out = readers.celeba_crop(Image.fromarray(arr), size=128)
    assert out.shape == (3, 128, 128) and out.dtype == np.uint8
    assert np.array_equal(out[0], r[57:185, 25:153]) and np.array_equal(out[1], c[57:185, 25:153])


def _write_fake_celeba(root, n=6, with_partition=True):
    folder = root / "celeba"
    img_dir = folder / "img_align_celeba"
    img_dir.mkdir(parents=True)
    names = []
    for i in range(n):
        arr = np.zeros((218, 178, 3), dtype=np.uint8)
        arr[:, :] = (0, 255, 0)  # green outside the crop box
        arr[57:185, 25:89] = (255, 0, 0)  # left half of the box red
        arr[57:185, 89:153] = (0, 0, 255)  # right half blue
        arr[0, 0] = (i, i, i)  # makes files distinct
        name = f"{i + 1:06d}.jpg"
        Image.fromarray(arr).save(img_dir / name, quality=100, subsampling=0)
        names.append(name)
    if with_partition:
        (folder / "list_eval_partition.txt").write_text(
            "".join(f"{nm} {0 if k < n - 2 else 2}\n" for k, nm in enumerate(names)))
    return folder, names


def test_celeba_loader_crop_shape_and_cache(tmp_path, monkeypatch):
    folder, names = _write_fake_celeba(tmp_path)
    x, y = data.load_images(cfg(dataset="celeba", root=str(tmp_path), image_size=64))
    assert y is None and x.shape == (4, 3, 64, 64) and x.dtype == torch.uint8  # partition 0 only
    xf = x.float()
    # no green anywhere (the box is exactly the crop); red left, blue right, away from the seam
    assert xf[:, 1].max() < 40
    assert (xf[:, 0, :, :30] > 215).all() and (xf[:, 2, :, :30] < 40).all()
    assert (xf[:, 2, :, 34:] > 215).all() and (xf[:, 0, :, 34:] < 40).all()
    cache = folder / "celeba64_train.pt"
    assert cache.is_file() and not list(folder.glob(".*.tmp"))
    # the second load comes from the cache: decoding must not run
    monkeypatch.setattr(readers, "_decode_celeba", lambda *a: pytest.fail("decoded again despite the cache"))
    x2, _ = data.load_images(cfg(dataset="celeba", root=str(tmp_path), image_size=64))
    assert torch.equal(x, x2)
    assert torch.load(cache, weights_only=True)["files"] == names[:4]


def test_celeba_without_partition_uses_all(tmp_path):
    _write_fake_celeba(tmp_path, n=3, with_partition=False)
    with pytest.warns(UserWarning, match="list_eval_partition"):
        x = readers.load_celeba(tmp_path, size=32)
    assert x.shape == (3, 3, 32, 32)


def test_celeba_missing_message(tmp_path):
    with pytest.raises(data.DatasetMissing) as e:
        data.load_images(cfg(dataset="celeba", root=str(tmp_path), image_size=64))
    msg = str(e.value)
    assert str((tmp_path / "celeba" / "img_align_celeba").resolve()) in msg
    assert "img_align_celeba.zip" in msg and "list_eval_partition.txt" in msg and "manually" in msg


def test_training_batch_is_the_model_range_then_the_flip_mask():
    """The one path from stored uint8 images to a training batch (lib.data.BatchSource uses it)."""
    u = torch.randint(0, 256, (6, 1, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([True, False, True, False, False, True])
    x, ref = data.training_batch(u, mask), data.to_model_range(u)
    assert torch.equal(x[mask], ref[mask].flip(-1)) and torch.equal(x[~mask], ref[~mask])
    assert torch.equal(data.training_batch(u), ref)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(data.random_flip(ref, g1), data.training_batch(u, torch.rand(6, generator=g2) < 0.5))
