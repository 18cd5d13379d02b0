"""Reading pretrained ε-networks into :class:`lib.unet.UNet`: the DDPM checkpoints, the DDIM code's training
checkpoints, diffusers UNet2DModel folders and this project's runs (docs/method.md §6).

The architecture is inferred from the weights (channels, multipliers, blocks, attention levels; the
resolution from the attention level, which the reference configurations all place at 16×16) and the
state dict must then match it name for name and shape for shape. The reference code's GroupNorm
always has 32 groups, a number the weights do not record: reference checkpoints are built with
``norm_groups=32``, and :func:`init_weights` refuses to put them into a model whose groups differ.
Files are read with ``torch.load(weights_only=True)`` after a size bound.
"""
from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import torch

from lib.infra.config import ConfigError, ModelConfig
from lib.infra.download import file_md5
from lib.pretrained import diffusers_format
from lib.pretrained.checkpoints import CHECKPOINTS, PretrainedError, expected_md5, resolve
from lib.unet import UNet

REFERENCE_GROUPS = 32  # the DDIM/DDPM code's Normalize(): GroupNorm(32, C)

# ---------------------------------------------------------------------------- reading state dicts
MAX_BYTES = 8 << 30  # the largest checkpoint read (the LSUN-256 DDIM checkpoints with optimiser state: ~2 GiB)


def _check_archive(path: Path) -> None:
    """Bound what reading ``path`` can allocate, from its metadata alone: torch.save stores zip members
    uncompressed, so members that inflate (a zip bomb) or a total above :data:`MAX_BYTES` are refused."""
    import zipfile

    size = path.stat().st_size
    if size > MAX_BYTES:
        raise PretrainedError(f"{path} has {size / 2**30:.1f} GiB, more than the {MAX_BYTES / 2**30:.0f} GiB "
                              "lib.pretrained reads (pretrained.MAX_BYTES); not a checkpoint of this UNet")
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as z:
            members = z.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise PretrainedError(f"cannot read {path} as a PyTorch checkpoint (a damaged zip archive: {e}); the file "
                              "may be truncated: delete it and fetch it again") from None
    total = sum(m.file_size for m in members)
    inflating = [m.filename for m in members if m.file_size > 2 * m.compress_size + (1 << 16)]
    if inflating or total > max(2 * size, 1 << 20):
        raise PretrainedError(f"{path}: its zip members claim {total} bytes from a {size}-byte file "
                              f"(e.g. {(inflating or [members[0].filename])[0]!r}); torch.save never compresses, so "
                              "this is not a checkpoint it wrote: delete it and fetch the file again")


def _read(path: Path):
    """``torch.load(weights_only=True)`` after the size bound; refused pickles and unreadable files are
    one message of our own (torch's advice to load with weights_only=False is never the fix here)."""
    with open(path, "rb") as f:
        head = f.read(64)
    if not head:
        raise PretrainedError(f"{path} is empty (0 bytes), not a checkpoint (an interrupted download?): delete it "
                              "and fetch it again")
    if head.lstrip()[:1] == b"<":
        raise PretrainedError(f"{path} is an HTML/XML page, not a checkpoint (a server's error page saved in its "
                              "place?): delete it and fetch it again")
    _check_archive(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated download, wrong file type, pickle of foreign objects
        # torch words every failure of its weights-only unpickler alike; a refused class or function is
        # "Unsupported global/class", a file that is no pickle at all is "invalid load key" and the like
        if re.search(r"Unsupported (global|class)|GLOBAL |[Rr]educe", str(e)):
            raise PretrainedError(f"{path} holds Python objects other than tensors and plain containers, which "
                                  "lib.pretrained refuses to unpickle (they could run code); convert it to a "
                                  "state dict (torch.save(model.state_dict(), ...)) in the environment that made "
                                  "it, or use the published file") from None
        raise PretrainedError(f"cannot read {path} as a PyTorch checkpoint ({type(e).__name__}); the file may be "
                              "truncated or not a checkpoint: delete it and fetch it again") from None


def _strip_module(sd: dict) -> dict:
    # DataParallel/DDP prefix every key with 'module.' (the DDIM code's saved model entry does).
    if sd and all(k.startswith("module.") for k in sd):
        return {k[len("module."):]: v for k, v in sd.items()}
    return sd


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items())


def _from_object(obj, path: Path, entry: str) -> tuple[dict, str]:
    """The state dict inside a loaded checkpoint object, and a name for its layout."""
    if entry not in ("ema", "model"):
        raise PretrainedError(f"entry must be 'ema' or 'model', got {entry!r}")
    if _is_state_dict(obj):
        return _strip_module(obj), "state_dict"
    if isinstance(obj, (list, tuple)):
        # The DDIM code's training checkpoint: [model, optimizer, epoch, step] (+ [ema] with model.ema).
        if len(obj) >= 4 and _is_state_dict(obj[0]):
            if entry == "ema":
                if len(obj) < 5 or not _is_state_dict(obj[4]):
                    raise PretrainedError(f"{path} is a DDIM-code checkpoint without an EMA entry (trained without "
                                          "model.ema); load its model weights with entry='model'")
                return _strip_module(obj[4]), "ddim_ckpt:ema"
            return _strip_module(obj[0]), "ddim_ckpt:model"
    if isinstance(obj, dict) and "ema" in obj and "model" in obj:  # a lib.train checkpoint
        return _strip_module(obj[entry]), f"lib_train_ckpt:{entry}"
    raise PretrainedError(f"{path} holds a {type(obj).__name__} that is not a state dict, a DDIM-code "
                          "[model, optimizer, epoch, step, ema] list or a lib.train checkpoint")


def _verified_run(path: Path):
    """A lib.train run's config after lib.infra.rundir's final.json check (the one lib.generate applies)."""
    from lib.infra import rundir
    from lib.infra.checkpoint import CheckpointError

    try:
        return rundir.verified_final(path)[0]
    except (CheckpointError, rundir.RunDirError, ConfigError, FileNotFoundError) as e:
        raise PretrainedError(str(e)) from None


def load_state(source, *, entry: str = "ema", root=None, manifest=None) -> dict:
    """Read a source into ``{"state_dict", "layout", "path", "name", "config" (or None), "groups"}``.

    A named checkpoint with a published MD5 is verified first. ``config`` is the ModelConfig a diffusers
    folder or a lib.train run states; None for bare weights
    (then :func:`infer_config`). ``groups``: 32 for reference checkpoints (DDIM layout, diffusers); for
    lib.train runs their ``model.norm_groups``, None where that is 0 (this project's width rule)."""
    path, name = resolve(source, root, manifest)
    known_md5 = expected_md5(name, manifest)
    if known_md5 and file_md5(path) != known_md5:  # a named checkpoint must be the published file
        raise PretrainedError(f"{path} has MD5 {file_md5(path)}, but {name} should have {known_md5}: the file is "
                              "corrupt or another checkpoint; delete it and fetch it again")
    if path.is_file() and path.name == "final.pt" and (path.parent / "run.json").is_file():
        path = path.parent  # a run's final.pt is served only through the run's final.json check
    if path.is_dir() and (path / "config.json").is_file() and ((path / "final.pt").exists()
                                                               or (path / "run.json").is_file()):  # a lib.train run
        cfg = _verified_run(path).model
        obj = _read(path / "final.pt")
        sd, layout = _from_object(obj, path / "final.pt", entry)
        return dict(state_dict=sd, layout="lib_train_run", path=path / "final.pt", name=name, config=cfg,
                    groups=cfg.norm_groups or None)
    if path.is_dir() and (path / "config.json").is_file():  # a diffusers folder (lib.diffusers_format)
        try:
            cfg, groups = diffusers_format.read_config(path)
            wf = diffusers_format.weights_file(path)
            raw = diffusers_format.read_safetensors(wf) if wf.suffix == ".safetensors" else _read(wf)
            sd = diffusers_format.diffusers_to_ours(raw, len(cfg.ch_mult))
        except diffusers_format.FormatError as e:
            raise PretrainedError(str(e)) from None
        return dict(state_dict=sd, layout="diffusers", path=wf, name=name, config=cfg, groups=groups)
    if path.is_dir():
        raise PretrainedError(f"{path} is a folder but neither a diffusers model (config.json + weights) nor a "
                              "lib.train run (config.json + final.pt)")
    sd, layout = _from_object(_read(path), path, entry)
    own = (path.parent / "config.json").is_file() and (path.parent / "run.json").is_file()
    if own:  # a checkpoint of a lib.train run: its own config and this project's group rule
        from lib.infra.config import load_json
        return dict(state_dict=sd, layout=layout, path=path, name=name, config=load_json(path.parent / "config.json").model,
                    groups=None)
    return dict(state_dict=sd, layout=layout, path=path, name=name, config=None, groups=REFERENCE_GROUPS)


def infer_config(sd: dict, *, resolution: int | None = None, dropout: float = 0.0) -> ModelConfig:
    """The ModelConfig of a state dict in this UNet's (= the DDIM code's) names.

    Channels, multipliers, blocks and attention levels come from the weights; the resolution is not
    stored, so it is taken as 16·2^a for the attention level a (the reference configurations attend at
    16×16) unless given."""
    try:
        ch = sd["conv_in.weight"].shape[0]
        in_channels = sd["conv_in.weight"].shape[1]
        out_ch = sd["conv_out.weight"].shape[0]
    except KeyError as e:
        raise PretrainedError(f"the weights have no {e.args[0]!r}: not a DDPM/DDIM UNet state dict (names like "
                              "'conv_in.weight', 'down.0.block.0.conv1.weight')") from None
    levels = sorted({int(m.group(1)) for k in sd if (m := re.match(r"down\.(\d+)\.", k))})
    if not levels or levels != list(range(len(levels))):
        raise PretrainedError("the weights have no consecutive 'down.<i>.' levels: not a DDPM/DDIM UNet state dict")
    L = len(levels)
    ch_mult = tuple(int(sd[f"down.{i}.block.0.conv1.weight"].shape[0] // ch) for i in range(L))
    n_blocks = len({int(m.group(1)) for k in sd if (m := re.match(r"down\.0\.block\.(\d+)\.", k))})
    attn_levels = [i for i in range(L) if f"down.{i}.attn.0.q.weight" in sd]
    if resolution is None:
        if len(attn_levels) != 1:
            raise PretrainedError(f"cannot infer the resolution: attention at {len(attn_levels)} levels; pass resolution=")
        resolution = 16 * 2 ** attn_levels[0]
    attn_res = tuple(resolution // 2 ** i for i in attn_levels)
    resamp = "down.0.downsample.conv.weight" in sd or L == 1
    return ModelConfig(kind="unet", in_channels=int(in_channels), out_ch=int(out_ch), resolution=int(resolution),
                       ch=int(ch), ch_mult=ch_mult, num_res_blocks=n_blocks, attn_resolutions=attn_res,
                       dropout=float(dropout), resamp_with_conv=resamp)


def _build(cfg: ModelConfig, groups) -> UNet:
    return UNet(in_channels=cfg.in_channels, out_ch=cfg.out_ch, resolution=cfg.resolution, ch=cfg.ch,
                ch_mult=cfg.ch_mult, num_res_blocks=cfg.num_res_blocks, attn_resolutions=cfg.attn_resolutions,
                dropout=cfg.dropout, resamp_with_conv=cfg.resamp_with_conv, norm_groups=groups)


def _load_strict(model: torch.nn.Module, sd: dict, where) -> None:
    own = model.state_dict()
    _check_fits(own, sd, where)
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items()}, strict=True)


def _check_fits(own: dict, sd: dict, where) -> None:
    """The weights ``sd`` match the state dict ``own`` name for name and shape for shape (``own`` may
    live on the meta device: a config claiming 8,192 channels is refused before it is allocated)."""
    missing, unexpected = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
    shapes = [f"{k}: {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in sorted(set(sd) & set(own))
              if sd[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing, e.g. {missing[:3]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unknown name(s), e.g. {unexpected[:3]}")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatch(es), e.g. {shapes[:3]}")
        raise PretrainedError(f"the weights of {where} do not fit this architecture: " + "; ".join(parts))


def load_unet(source, *, device="cpu", entry: str = "ema", resolution: int | None = None, root=None, manifest=None):
    """A pretrained :class:`lib.unet.UNet` in eval mode and the ModelConfig it corresponds to.

    ``source``: a path or a :data:`CHECKPOINTS` name (see the module docstring); ``entry``: 'ema'
    (default) or 'model' for checkpoints holding both. Reference checkpoints get 32 GroupNorm groups
    (``model.norm_groups``); lib.train runs this project's rule."""
    st = load_state(source, entry=entry, root=root, manifest=manifest)
    cfg = st["config"]
    if cfg is None:
        known = CHECKPOINTS.get(st["name"] or "", {})
        cfg = infer_config(st["state_dict"], resolution=resolution or known.get("resolution"),
                           dropout=known.get("dropout", 0.0))
    elif resolution is not None and resolution != cfg.resolution:
        cfg = replace(cfg, resolution=resolution, attn_resolutions=tuple(r * resolution // cfg.resolution
                                                                         for r in cfg.attn_resolutions))
    with torch.device("meta"):  # the architecture's names and shapes, without allocating it
        _check_fits(_build(cfg, st["groups"]).state_dict(), st["state_dict"], st["path"])
    model = _build(cfg, st["groups"])
    _load_strict(model, st["state_dict"], st["path"])
    return model.to(device).eval(), cfg


def _groups_of(model: torch.nn.Module) -> set:
    return {m.num_groups for m in model.modules() if isinstance(m, torch.nn.GroupNorm)}


def init_weights(model: torch.nn.Module, source, *, entry: str = "ema", root=None, manifest=None) -> dict:
    """Load ``source``'s weights into ``model`` (strict: same names and shapes) and return its provenance
    ``{"source", "path", "layout", "md5"}`` (MD5 of the weights file) for run.json.

    Refuses reference weights (always 32 GroupNorm groups) for a model whose GroupNorms have other
    group counts: the shapes would load but the network would compute something else."""
    st = load_state(source, entry=entry, root=root, manifest=manifest)
    if st["groups"] is not None:
        bad = _groups_of(model) - {st["groups"]}
        if bad:
            raise PretrainedError(f"{source}: reference weights use {st['groups']} GroupNorm groups, but this model has "
                                  f"groups {sorted(bad)} (lib.unet.num_groups of its widths); use widths that are "
                                  f"multiples of 128 (e.g. the gpu/paper model) or build it with norm_groups={st['groups']}")
    elif isinstance(model, UNet) and model.norm_groups is not None:
        raise PretrainedError(f"{source} is a lib.train run (this project's group rule) but the model has "
                              f"norm_groups={model.norm_groups}")
    with torch.no_grad():
        _load_strict(model, st["state_dict"], st["path"])
    md5 = file_md5(st["path"])  # named checkpoints were checked against their published MD5 in load_state
    return {"source": str(source), "path": str(st["path"]), "layout": st["layout"], "entry": entry, "md5": md5}
