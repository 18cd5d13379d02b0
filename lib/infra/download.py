"""Getting a verified file onto disk: download through ``DEST.part``, install only a complete file of the
right checksum (MD5) or, where none is published, of the right type and size; MD5 of a file.

Used by ``make fetch`` (lib.experiment.fetch) and lib.pretrained; the only code that uses the network."""
from __future__ import annotations

import hashlib
import sys
import urllib.request
import zipfile
from pathlib import Path

MIN_BYTES = {"torch": 1 << 20, "npz": 1 << 10}  # the smallest real file of each kind is far larger


class DownloadFailed(OSError):
    """The transfer failed and nothing was kept: the message says where to place the file by hand."""


class DownloadRefused(ValueError):
    """The file arrived but is not the one asked for (checksum, or type and size): nothing was kept."""


def file_md5(path) -> str:
    """MD5 of a file (streamed)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()


def download_problem(path: Path, kind: str | None, min_bytes: int | None = None) -> str | None:
    """Why the file at ``path`` is not a ``kind`` file ('torch': a zip archive or a pickle, as torch.save
    and TorchScript write; 'npz': a zip archive), or None. Where no checksum is published this is
    what stands between an HTML error page and the installed weights: type (magic bytes) and size."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(64)
    if head.lstrip()[:1] == b"<":
        return f"it is an HTML/XML page ({size} bytes), not a file to install (an error page of the server?)"
    need = MIN_BYTES.get(kind, 1) if min_bytes is None else min_bytes
    if size < need:
        return f"it has {size} bytes, fewer than the {need} a {kind or 'real'} file has at least"
    if kind == "torch" and not (zipfile.is_zipfile(path) or head[:1] == b"\x80"):
        return "it is neither a zip archive nor a pickle (torch.save and TorchScript write one of them)"
    if kind == "npz" and not zipfile.is_zipfile(path):
        return "it is not a zip archive (.npz)"
    return None


def download(url: str, dest: Path, md5: str | None, kind: str | None = None, min_bytes: int | None = None) -> Path:
    """Download ``url`` to ``dest`` through ``dest.part``; installed only when complete (the announced
    length), of the right checksum (``md5``) or at least of the right type and size (``kind``). A
    partial or refused download is removed; every failure is one DownloadFailed/DownloadRefused line."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    print(f"downloading {url}\n  -> {dest}", file=sys.stderr)
    try:
        with urllib.request.urlopen(url, timeout=60) as r, open(part, "wb") as f:
            length = r.headers.get("Content-Length") if getattr(r, "headers", None) is not None else None
            for chunk in iter(lambda: r.read(1 << 20), b""):
                f.write(chunk)
        if length is not None and part.stat().st_size != int(length):
            raise OSError(f"the transfer stopped after {part.stat().st_size} of {length} bytes")
    except Exception as e:  # OSError, http.client.IncompleteRead, ValueError of a bad URL: one line each
        part.unlink(missing_ok=True)
        raise DownloadFailed(f"download of {url} failed ({type(e).__name__}: {e}); nothing was kept. Run the same "
                             f"command again, or with no network download it on another machine and place it "
                             f"at {dest}" + (f" (MD5 {md5})" if md5 else "")) from None
    got = file_md5(part)
    if md5 and got != md5:
        part.unlink(missing_ok=True)
        raise DownloadRefused(f"{url} arrived with MD5 {got}, expected {md5}; nothing was kept, try again")
    problem = None if md5 else download_problem(part, kind, min_bytes)
    if problem:
        part.unlink(missing_ok=True)
        raise DownloadRefused(f"{url} was not installed at {dest}: {problem}; nothing was kept. Try again later, or "
                              f"download it by hand and place it there")
    part.replace(dest)
    return dest


def _hub_folder_in_place(dest: Path) -> bool:
    """A hub folder already fetched: a config.json that is a JSON object, and a weights file that is neither
    empty nor an HTML page (what an earlier, failed fetch or a server's error page may have left)."""
    import json

    try:
        if not isinstance(json.loads((dest / "config.json").read_text()), dict):
            return False
    except (OSError, ValueError):
        return False
    weights = [p for p in dest.glob("*.safetensors") if p.is_file()] + [p for p in dest.glob("*.bin") if p.is_file()]
    return any(download_problem(p, None, 1) is None for p in weights)


def hub_folder(repo: str, dest: Path, what: str) -> Path:
    """The Hugging Face hub repository ``repo`` (its config and weights) downloaded into ``dest`` unless
    ``dest/config.json`` is there already; ``what`` names it in the messages."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise DownloadFailed(f"fetching {what} needs huggingface_hub (pip install huggingface_hub), or download "
                             f"the folder {repo} by hand into {dest}") from None
    if not _hub_folder_in_place(dest):
        try:
            snapshot_download(repo, local_dir=str(dest), allow_patterns=["config.json", "*.safetensors", "*.json"])
        except Exception as err:  # no network, unknown repository, hub errors: one line
            raise DownloadFailed(f"fetching {repo} from the Hugging Face hub failed ({type(err).__name__}: "
                                 f"{str(err).splitlines()[0] if str(err) else ''}); run it again on a machine "
                                 f"with network, or download the folder by hand into {dest}") from None
    return dest
