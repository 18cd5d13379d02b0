"""The public checkpoints by name (:data:`CHECKPOINTS`), where each lives under ``data/pretrained/``, and
fetching them: the one step that uses the network (``python -m lib.pretrained fetch NAME``), each file
verified by its published MD5 (lib.infra.download); nothing partial is kept.
"""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path

from lib.infra import download as dl
from lib.infra.download import file_md5
from lib.infra.paths import ROOT

# The DDIM code's functions/ckpt_util.py (URL_MAP, CKPT_MAP, MD5_MAP): the DDPM authors' TF checkpoints
# converted to PyTorch state dicts of the DDIM code's Model. 'ddim_celeba': the DDIM authors' CelebA-64
# model (Google Drive, linked from the DDIM README; no checksum is published, so none is checked).
_HEIBOX = "https://heibox.uni-heidelberg.de/f/{}/?dl=1"
CHECKPOINTS = {
    "cifar10": dict(url=_HEIBOX.format("869980b53bf5416c8a28"), md5="82ed3067fd1002f5cf4c339fb80c4669",
                    file="model-790000.ckpt", resolution=32, dropout=0.1, dataset="cifar10"),
    "ema_cifar10": dict(url=_HEIBOX.format("2e4f01e2d9ee49bab1d5"), md5="1fa350b952534ae442b1d5235cce5cd3",
                        file="model-790000.ckpt", resolution=32, dropout=0.1, dataset="cifar10"),
    "lsun_bedroom": dict(url=_HEIBOX.format("f179d4f21ebc4d43bbfe"), md5="f70280ac0e08b8e696f42cb8e948ff1c",
                         file="model-2388000.ckpt", resolution=256, dropout=0.0, dataset="lsun_bedroom"),
    "ema_lsun_bedroom": dict(url=_HEIBOX.format("b95206528f384185889b"), md5="1921fa46b66a3665e450e42f36c2720f",
                             file="model-2388000.ckpt", resolution=256, dropout=0.0, dataset="lsun_bedroom"),
    "lsun_cat": dict(url=_HEIBOX.format("fac870bd988348eab88e"), md5="bbee0e7c3d7abfb6e2539eaf2fb9987b",
                     file="model-1761000.ckpt", resolution=256, dropout=0.0, dataset="lsun_cat"),
    "ema_lsun_cat": dict(url=_HEIBOX.format("0701aac3aa69457bbe34"), md5="646f23f4821f2459b8bafc57fd824558",
                         file="model-1761000.ckpt", resolution=256, dropout=0.0, dataset="lsun_cat"),
    "lsun_church": dict(url=_HEIBOX.format("2711a6f712e34b06b9d8"), md5="eb619b8a5ab95ef80f94ce8a5488dae3",
                        file="model-4432000.ckpt", resolution=256, dropout=0.0, dataset="lsun_church"),
    "ema_lsun_church": dict(url=_HEIBOX.format("44ccb50ef3c6436db52e"), md5="fdc68a23938c2397caba4a260bc2445f",
                            file="model-4432000.ckpt", resolution=256, dropout=0.0, dataset="lsun_church"),
    "ddim_celeba": dict(url="https://drive.google.com/uc?id=1R_H-fJYXSH79wfSKs9D-fuKQVan5L-GR", md5=None,
                        file="ckpt.pth", resolution=64, dropout=0.1, dataset="celeba", manual=True),
    "google/ddpm-cifar10-32": dict(hub="google/ddpm-cifar10-32", md5=None, file=None, resolution=32, dropout=0.1,
                                   dataset="cifar10"),
}


class PretrainedError(ValueError):
    """A checkpoint that cannot be read or does not fit this UNet; the message names the problem and the fix."""


class PretrainedMissing(FileNotFoundError):
    """A named checkpoint is not on this machine: the message says where to put it and where to get it."""


# ---------------------------------------------------------------------------- files
def pretrained_dir(root=None) -> Path:
    return Path(root or ROOT) / "data" / "pretrained"


def _local_name(name: str) -> str:
    return name.replace("/", "--")


def named_path(name: str, root=None) -> Path:
    entry = CHECKPOINTS[name]
    folder = pretrained_dir(root) / _local_name(name)
    return folder / entry["file"] if entry.get("file") else folder


def _missing(name: str, where: Path) -> PretrainedMissing:
    e = CHECKPOINTS[name]
    if e.get("hub"):
        get = f"`python -m lib.pretrained fetch {name}` (huggingface_hub), or download the folder {e['hub']} by hand"
    elif e.get("manual"):
        get = f"download {e['url']} by hand (Google Drive; no checksum is published)"
    else:
        get = f"`python -m lib.pretrained fetch {name}` on a machine with network, or download {e['url']} (MD5 {e['md5']})"
    return PretrainedMissing(f"the pretrained checkpoint {name!r} is not at {where}; place it there: {get}")


def resolve(source, root=None, manifest=None) -> tuple[Path, str | None]:
    """(path, known name or None) of a source: an existing path, else a name in :data:`CHECKPOINTS`.
    A rehearsal ``manifest`` (lib.infra.rehearsal) that lists the name puts its fixture in that name's
    place; nothing else ever reads a manifest."""
    name = str(source)
    if manifest is not None and name in manifest.checkpoints:
        where = Path(manifest.checkpoints[name]["path"])
        if not where.is_file():
            raise PretrainedMissing(f"the rehearsal fixture {where} for {name!r} (listed in {manifest.path}) is gone; "
                                    f"run scripts/rehearse.py again to remake the fixtures")
        return where, name
    p = Path(source)
    if p.exists():
        return p, None
    if name in CHECKPOINTS:
        where = named_path(name, root)
        if not where.exists():
            raise _missing(name, where)
        return where, name
    raise PretrainedMissing(f"{source!r} is neither an existing file or folder nor a known checkpoint name; "
                            f"known names: {', '.join(CHECKPOINTS)}")


def expected_md5(name: str | None, manifest=None) -> str | None:
    """The MD5 a named checkpoint must have: the published one, or the rehearsal manifest's for its fixture."""
    if name and manifest is not None and name in manifest.checkpoints:
        return manifest.checkpoints[name]["md5"]
    return CHECKPOINTS[name].get("md5") if name else None


# ---------------------------------------------------------------------------- fetching (explicit only)
@contextlib.contextmanager
def _as_pretrained_errors():
    """lib.infra.download's failures as this module's: PretrainedMissing (nothing arrived) or PretrainedError."""
    try:
        yield
    except dl.DownloadFailed as e:
        raise PretrainedMissing(str(e)) from None
    except dl.DownloadRefused as e:
        raise PretrainedError(str(e)) from None


def download(url: str, dest: Path, md5: str | None, kind: str | None = None, min_bytes: int | None = None) -> Path:
    """:func:`lib.infra.download.download` (complete, verified, nothing partial kept), failing as PretrainedMissing
    or PretrainedError."""
    with _as_pretrained_errors():
        return dl.download(url, dest, md5, kind, min_bytes)


def fetch(name: str, root=None) -> Path:
    """Download a :data:`CHECKPOINTS` entry into ``data/pretrained/`` and verify its MD5 (where one is
    published); skipped when the file is already there with the right checksum."""
    if name not in CHECKPOINTS:
        raise PretrainedMissing(f"unknown checkpoint {name!r}; known: {', '.join(CHECKPOINTS)}")
    e, dest = CHECKPOINTS[name], named_path(name, root)
    if e.get("hub"):
        with _as_pretrained_errors():
            return dl.hub_folder(e["hub"], dest, name)
    if e.get("manual"):
        if dest.is_file():
            return dest
        raise _missing(name, dest)
    if dest.is_file():
        if file_md5(dest) == e["md5"]:
            print(f"{name}: already in place ({dest}, MD5 ok)", file=sys.stderr)
            return dest
        print(f"{name}: {dest} has the wrong MD5; downloading again", file=sys.stderr)
    return download(e["url"], dest, e["md5"])
