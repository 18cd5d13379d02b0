"""diffusers' ``UNet2DModel`` format (docs/method.md §6): its configuration and its parameter names.

A folder's ``config.json`` is type- and range-checked and mapped onto lib.unet.UNet's ModelConfig
(:func:`read_config`; a setting this UNet does not compute exactly is refused), and its parameter names
are renamed to ours (:func:`diffusers_to_ours`); lib.pretrained.loading loads the folder with them, and
lib.pretrained.export runs the same renaming backwards.
"""
from __future__ import annotations

import json
import re
from pathlib import Path


from lib.infra.config import ModelConfig


class FormatError(ValueError):
    """A diffusers folder this UNet cannot read or represent: the message names the file, the field and the fix."""


def weights_file(folder: Path) -> Path:
    """The weights file of a diffusers folder (safetensors first)."""
    for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"):
        if (folder / name).is_file():
            return folder / name
    raise FormatError(f"{folder} has a config.json but no diffusion_pytorch_model.safetensors or .bin")


# The UNet2DModel settings this UNet computes exactly; anything else is refused, naming the field.
FIXED = dict(act_fn="silu", time_embedding_type="positional", flip_sin_to_cos=False, freq_shift=1,
             downsample_padding=0, center_input_sample=False, mid_block_scale_factor=1,
             resnet_time_scale_shift="default", add_attention=True, class_embed_type=None,
             num_class_embeds=None, upsample_type="conv", downsample_type="conv")
DEFAULTS = dict(act_fn="silu", time_embedding_type="positional", flip_sin_to_cos=True, freq_shift=0,
                downsample_padding=1, center_input_sample=False, mid_block_scale_factor=1,
                resnet_time_scale_shift="default", add_attention=True, class_embed_type=None,
                num_class_embeds=None, upsample_type="conv", downsample_type="conv", norm_eps=1e-5,
                norm_num_groups=32, attention_head_dim=8, layers_per_block=2, attn_norm_num_groups=None,
                time_embedding_dim=None, num_train_timesteps=None)


# Every config.json field the mapping reads: its type and range, checked before anything is computed
# from it (ranges generous: the largest public UNet2DModel configurations fit well inside them).
# (freq_shift, downsample_padding, mid_block_scale_factor: compared for equality with FIXED.)
_INT_FIELDS = dict(in_channels=(1, 64), out_channels=(1, 64), layers_per_block=(1, 16), norm_num_groups=(1, 1024))
_MAX_WIDTH, _MAX_LEVELS, _MAX_SIZE = 4096, 8, 4096


def _validate_fields(c, where: Path) -> None:
    """Type and range of every field :func:`check_config` reads; one FormatError naming
    the first bad one (a crafted or truncated config.json never reaches arithmetic or allocation)."""
    def bad(field, what):
        raise FormatError(f"{where / 'config.json'}: field {field}={c.get(field)!r} must be {what}; fix the file "
                          "or fetch the folder again")

    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool)

    if not isinstance(c, dict):
        raise FormatError(f"{where / 'config.json'} holds a {type(c).__name__}, not a JSON object of settings")
    for k in ("block_out_channels", "down_block_types", "up_block_types", "sample_size", "in_channels", "out_channels"):
        if k not in c:
            raise FormatError(f"{where / 'config.json'} has no field {k!r}: not a UNet2DModel configuration")
    for k, (lo, hi) in _INT_FIELDS.items():
        if k in c and not (is_int(c[k]) and lo <= c[k] <= hi):
            bad(k, f"an integer in [{lo}, {hi}]")
    w = c["block_out_channels"]
    if not (isinstance(w, list) and 1 <= len(w) <= _MAX_LEVELS and all(is_int(x) and 1 <= x <= _MAX_WIDTH for x in w)):
        bad("block_out_channels", f"a list of 1 to {_MAX_LEVELS} integers in [1, {_MAX_WIDTH}]")
    for k in ("down_block_types", "up_block_types"):
        if not (isinstance(c[k], list) and all(isinstance(x, str) for x in c[k])):
            bad(k, "a list of block names")
    size = c["sample_size"]
    size = size[0] if isinstance(size, list) and size and len(set(map(repr, size))) == 1 else size
    if not (is_int(size) and 1 <= size <= _MAX_SIZE):
        bad("sample_size", f"an integer in [1, {_MAX_SIZE}] (or a square [h, w])")
    for k in ("norm_eps", "dropout"):
        if c.get(k) is not None and not (isinstance(c[k], (int, float)) and not isinstance(c[k], bool)
                                         and 0 <= c[k] < 1):
            bad(k, "a number in [0, 1)")
    for k in ("attention_head_dim", "time_embedding_dim", "attn_norm_num_groups"):
        if c.get(k) is not None and not (is_int(c[k]) and 1 <= c[k] <= 4 * _MAX_WIDTH):
            bad(k, f"null or an integer in [1, {4 * _MAX_WIDTH}]")
    for k in ("_class_name", "act_fn", "time_embedding_type", "resnet_time_scale_shift", "class_embed_type",
              "upsample_type", "downsample_type"):
        if c.get(k) is not None and not isinstance(c[k], str):
            bad(k, "a string")


def check_config(c: dict, where: Path) -> tuple[ModelConfig, int]:
    """The ModelConfig and GroupNorm group count of a UNet2DModel config.json ``c`` (of the folder ``where``);
    a setting lib.unet.UNet does not compute exactly is refused, naming the field."""
    _validate_fields(c, where)
    cls = c.get("_class_name", "UNet2DModel")
    if cls != "UNet2DModel":
        raise FormatError(f"{where}: _class_name is {cls!r}; only diffusers' UNet2DModel maps onto this UNet")
    get = lambda k: c.get(k, DEFAULTS.get(k))  # noqa: E731
    for k, want in FIXED.items():
        if get(k) != want:
            raise FormatError(f"{where}: config field {k}={get(k)!r} cannot be represented by lib.unet.UNet "
                              f"(it computes {k}={want!r})")
    if abs(float(get("norm_eps")) - 1e-6) > 1e-12:
        raise FormatError(f"{where}: config field norm_eps={get('norm_eps')!r} cannot be represented (GroupNorm eps is 1e-6)")
    if get("attn_norm_num_groups") not in (None, get("norm_num_groups")):
        raise FormatError(f"{where}: config field attn_norm_num_groups={get('attn_norm_num_groups')!r} differs "
                          "from norm_num_groups; this UNet uses one group count")
    if get("time_embedding_dim") not in (None, 4 * c["block_out_channels"][0]):
        raise FormatError(f"{where}: config field time_embedding_dim={get('time_embedding_dim')!r} must be 4 × "
                          "block_out_channels[0]")
    down, up = list(c["down_block_types"]), list(c["up_block_types"])
    widths = [int(w) for w in c["block_out_channels"]]
    L = len(widths)
    if len(down) != L or len(up) != L:
        raise FormatError(f"{where}: down_block_types/up_block_types must have one entry per block_out_channels")
    attn = [d == "AttnDownBlock2D" for d in down]
    for i, d in enumerate(down):
        if d not in ("DownBlock2D", "AttnDownBlock2D"):
            raise FormatError(f"{where}: config field down_block_types[{i}]={d!r} cannot be represented "
                              "(DownBlock2D or AttnDownBlock2D)")
    for k, u in enumerate(up):
        want = "AttnUpBlock2D" if attn[L - 1 - k] else "UpBlock2D"
        if u != want:
            raise FormatError(f"{where}: config field up_block_types[{k}]={u!r}; this UNet needs {want!r} "
                              "(the decoder mirrors the encoder's attention levels)")
    ch = widths[0]
    if any(w % ch for w in widths):
        raise FormatError(f"{where}: config field block_out_channels={widths} must be multiples of the first")
    head = get("attention_head_dim")
    for i in [i for i in range(L) if attn[i]] + [L - 1]:
        if head is not None and widths[i] // head != 1:
            raise FormatError(f"{where}: config field attention_head_dim={head} gives {widths[i] // head} heads "
                              f"at width {widths[i]}; this UNet's attention is single-head (use None or {widths[i]})")
    res = int(c["sample_size"] if not isinstance(c["sample_size"], (list, tuple)) else c["sample_size"][0])
    cfg = ModelConfig(kind="unet", in_channels=int(c["in_channels"]), out_ch=int(c["out_channels"]), resolution=res,
                      ch=ch, ch_mult=tuple(w // ch for w in widths), num_res_blocks=int(get("layers_per_block")),
                      attn_resolutions=tuple(res // 2 ** i for i in range(L) if attn[i]),
                      dropout=float(c.get("dropout", 0.0) or 0.0), resamp_with_conv=True)
    return cfg, int(get("norm_num_groups"))


def diffusers_to_ours(sd: dict, num_levels: int) -> dict:
    """Rename a UNet2DModel state dict to this UNet's names (attention Linear weights → 1×1 convs)."""
    out = {}
    unknown = []
    for k, v in sd.items():
        m = None
        new = None
        if k.startswith("time_embedding.linear_"):
            new = k.replace("time_embedding.linear_1", "temb.dense.0").replace("time_embedding.linear_2", "temb.dense.1")
        elif k.startswith(("conv_in.", "conv_out.")):
            new = k
        elif k.startswith("conv_norm_out."):
            new = k.replace("conv_norm_out.", "norm_out.")
        elif (m := re.match(r"(down|up)_blocks\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.*)", k)):
            side, i, kind, j, rest = m.groups()
            level = int(i) if side == "down" else num_levels - 1 - int(i)  # diffusers' up blocks run inner → outer
            prefix = f"{side}.{level}"
            if kind == "resnets":
                new = f"{prefix}.block.{j}.{_resnet_name(rest)}"
            elif kind == "attentions":
                new = f"{prefix}.attn.{j}.{_attn_name(rest)}"
            else:
                new = f"{prefix}.{'downsample' if side == 'down' else 'upsample'}.{rest}"
        elif (m := re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.*)", k)):
            kind, j, rest = m.groups()
            new = (f"mid.block_{int(j) + 1}.{_resnet_name(rest)}" if kind == "resnets" else f"mid.attn_1.{_attn_name(rest)}")
        if new is None or new.endswith("?"):
            unknown.append(k)
            continue
        if ".attn." in new or new.startswith("mid.attn_1."):
            if new.endswith(".weight") and v.ndim == 2 and not new.endswith("norm.weight"):
                v = v[:, :, None, None]  # Linear [C, C] → Conv2d 1×1 [C, C, 1, 1]
        out[new] = v
    if unknown:
        raise FormatError(f"{len(unknown)} diffusers parameter name(s) have no counterpart in lib.unet.UNet, e.g. "
                          f"{unknown[:5]}")
    return out


def _resnet_name(rest: str) -> str:
    return rest.replace("time_emb_proj.", "temb_proj.").replace("conv_shortcut.", "nin_shortcut.")


_ATTN = {"group_norm.": "norm.", "to_q.": "q.", "to_k.": "k.", "to_v.": "v.", "to_out.0.": "proj_out."}


def _attn_name(rest: str) -> str:
    for a, b in _ATTN.items():
        if rest.startswith(a):
            return b + rest[len(a):]
    return rest + "?"


def read_config(folder: Path) -> tuple[ModelConfig, int]:
    """:func:`check_config` of ``folder/config.json``; invalid JSON is one FormatError."""
    try:
        c = json.loads((folder / "config.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FormatError(f"{folder / 'config.json'} is not valid JSON ({e}; a truncated download?): fetch the "
                          "folder again") from None
    return check_config(c, folder)


def read_safetensors(wf: Path) -> dict:
    """The tensors of a .safetensors weights file; a missing package or an unreadable file is one FormatError."""
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise FormatError(f"{wf} is a .safetensors file and the package safetensors is not installed: "
                          "pip install -r requirements.txt (it pins safetensors)") from None
    try:
        return load_file(str(wf))
    except Exception as e:
        raise FormatError(f"cannot read {wf} ({type(e).__name__}: {str(e)[:200]}); the file may be "
                          "truncated: fetch the folder again") from None
