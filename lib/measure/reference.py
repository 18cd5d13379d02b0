"""The training set's Inception features, computed once and cached: the reference KID needs at the
``gpu``/``paper`` profiles (clean-fid stores only the statistics (μ, Σ), which FID needs and KID cannot use).

The cache is ``<cache_dir>/<dataset>_<res>px_<mode>[_rehearsal].npy`` with a ``.json`` beside it that
records its key: the code that computed the features (lib/measure/fid.py and this module, clean-fid's
sources), the feature network (:func:`lib.measure.fid.network_id`), the mode and the SHA-256 of the
training images themselves. A cache whose key differs from the one asked for (other code, another
network, other images), or that is torn, is rebuilt with a warning naming the file and the reason;
it is never reused silently. 50,000 CIFAR-10 images: about 400 MB of float32 features, minutes on a GPU.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import torch

from lib.infra.checkpoint import atomic_write_bytes


def images_sha256(images_uint8: torch.Tensor) -> str:
    """SHA-256 of the images' bytes (uint8 [N, C, H, W], in the order given)."""
    x = torch.as_tensor(images_uint8)
    if x.dtype != torch.uint8:
        raise TypeError(f"reference images must be uint8, got {x.dtype}")
    return hashlib.sha256(x.contiguous().numpy().tobytes()).hexdigest()


def cache_key(images_uint8, *, dataset: str, mode: str, manifest=None) -> dict:
    """Everything that decides the features: code, network, mode, data."""
    from lib.infra.fingerprint import source_fingerprint
    from lib.measure import fid

    x = torch.as_tensor(images_uint8)
    return {"dataset": dataset, "resolution": int(x.shape[-1]), "n": int(len(x)), "mode": mode,
            "network": fid.network_id(mode, manifest), "clean_fid": fid.clean_fid_code(),
            "code": source_fingerprint(["lib/measure/fid.py", "lib/measure/reference.py"]),
            "images_sha256": images_sha256(x)}


def cache_path(cache_dir, key: dict) -> Path:
    tag = "_rehearsal" if key["network"].startswith("rehearsal") else ""
    return Path(cache_dir) / f"{key['dataset']}_{key['resolution']}px_{key['mode']}{tag}.npy"


def _cached(npy: Path, key: dict):
    """``(features, None)`` when the cache at ``npy`` was made for ``key``, else ``(None, why not)``."""
    meta_file = npy.with_suffix(".json")
    try:
        meta = json.loads(meta_file.read_text())
    except FileNotFoundError:
        return None, f"has no {meta_file.name} (an interrupted write)"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None, f"has an unreadable {meta_file.name} (torn)"
    if not isinstance(meta, dict):
        return None, f"has a foreign {meta_file.name}"
    diff = sorted(k for k in key if meta.get(k) != key[k])
    if diff:
        return None, f"was made with another {', '.join(diff)}"
    try:
        f = np.load(npy, allow_pickle=False)
    except Exception as e:  # derived data: rebuild rather than trust a torn file
        return None, f"is unreadable ({type(e).__name__}; torn?)"
    if f.ndim != 2 or len(f) != key["n"]:
        return None, f"holds an array of shape {f.shape}, not [{key['n']}, D]"
    return f, None


def reference_features(images_uint8, *, dataset: str, mode: str, cache_dir, device=None, manifest=None,
                       progress: bool = True) -> np.ndarray:
    """The features [N, D] of the training images through clean-fid's pipeline (lib.measure.fid), from the
    cache when it was made for exactly these images, code, network and mode; else computed and cached."""
    from lib.measure import fid

    key = cache_key(images_uint8, dataset=dataset, mode=mode, manifest=manifest)
    npy = cache_path(cache_dir, key)
    if npy.is_file() or npy.with_suffix(".json").is_file():
        f, why = _cached(npy, key)
        if f is not None:
            return f
        warnings.warn(f"the reference-feature cache {npy} {why}; computing the features again", stacklevel=2)
    if progress:
        print(f"reference features: {key['n']} {dataset} training images through {key['network']} "
              f"(once; cached as {npy})", flush=True)
    f = fid.inception_features(images_uint8, mode=mode, device=device, manifest=manifest).astype(np.float32)
    npy.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(npy, lambda fh: np.save(fh, f, allow_pickle=False))
    atomic_write_bytes(npy.with_suffix(".json"), lambda fh: fh.write(json.dumps(key, indent=2).encode()))
    return f
