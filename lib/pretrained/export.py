"""Export (``python -m lib.pretrained export RUN_DIR OUT_DIR``, :func:`export_run`): a lib.train run's EMA
weights as ``OUT_DIR/config.json`` + ``diffusion_pytorch_model.safetensors``, ``scheduler_config.json``
(a ``DDIMScheduler`` on the run's linear-β schedule, docs/method.md §1) and a model card ``README.md``,
written under a temporary name, loaded back (``UNet2DModel.from_pretrained``, compared with the run's ε,
float32, CPU; this project's loader, the run's weights exactly) and only then put in place: the export
states its own max |Δε|, and a failed one leaves nothing at OUT_DIR. A destination that is a file or a
non-empty folder, and a run trained by other code, are refused. Its names come from running the import rule (lib.pretrained.diffusers_format) on the diffusers
model's own parameter names, so import and export cannot drift. A run ``UNet2DModel`` cannot compute
exactly is refused (:class:`ExportError`).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from lib.infra.config import load_json
from lib.pretrained.diffusers_format import FIXED, diffusers_to_ours

# ---------------------------------------------------------------------------- export
TOLERANCE = 1e-5  # max |Δε| accepted between the run's model and the exported one (float32, CPU)


class ExportError(ValueError):
    """A run that cannot be exported: the message names the run and the reason."""


def diffusers_config(cfg, groups: int) -> dict:
    """The UNet2DModel configuration that computes lib.unet.UNet(cfg) with ``groups`` GroupNorm groups."""
    L = len(cfg.ch_mult)
    attn = [cfg.resolution // 2 ** i in cfg.attn_resolutions for i in range(L)]
    return dict(
        sample_size=cfg.resolution, in_channels=cfg.in_channels, out_channels=cfg.out_ch,
        block_out_channels=[cfg.ch * m for m in cfg.ch_mult], layers_per_block=cfg.num_res_blocks,
        down_block_types=["AttnDownBlock2D" if a else "DownBlock2D" for a in attn],
        up_block_types=["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)],
        norm_num_groups=groups, norm_eps=1e-6, dropout=float(cfg.dropout), attention_head_dim=None,
        **FIXED)


def _groups(model) -> int:
    """The one GroupNorm group count of ``model``; UNet2DModel has a single ``norm_num_groups``."""
    found = {m.num_groups for m in model.modules() if isinstance(m, torch.nn.GroupNorm)}
    if len(found) != 1:
        widths = sorted({m.num_channels for m in model.modules() if isinstance(m, torch.nn.GroupNorm)})
        raise ExportError(f"its GroupNorms use {sorted(found)} groups (this project's rule gives widths {widths} "
                          "different counts), but diffusers' UNet2DModel uses one norm_num_groups for every layer; "
                          "a run whose widths are all ≥ 128 (32 groups each, as at profile gpu) can be exported")
    return found.pop()


def _ours_to_diffusers(ours: dict, dmodel, levels: int) -> dict:
    """Our state dict in the diffusers model's names and shapes (1×1 convs → Linear for attention)."""
    out, theirs, used = {}, dmodel.state_dict(), set()
    for k, v in theirs.items():
        name = next(iter(diffusers_to_ours({k: v}, levels)))  # the import rule, run backwards
        out[k] = ours[name].reshape(v.shape).to(v.dtype)
        used.add(name)
    unused = set(ours) - used
    if unused:
        raise ExportError(f"{len(unused)} parameter(s) have no place in UNet2DModel, e.g. {sorted(unused)[:3]}")
    return out


def _older_code(run_dir: Path, full) -> str | None:
    """Why ``run_dir`` was not trained by today's code, or None: the recipe fingerprint its run.json records
    (lib.recipe.training_code, as lib.train recorded it) must be today's."""
    from lib import recipe
    from lib.infra import rundir

    try:
        run = rundir.read_json(run_dir / "run.json") or {}
    except rundir.RunDirError as e:
        return str(e)
    then = run.get("code")
    if not then:
        return "it has no run.json fingerprint, so the code that trained it is unknown"
    now = recipe.training_code(full.model.kind, run.get("arm", "baseline"))
    changed = sorted(k for k in set(then) | set(now) if then.get(k) != now.get(k))
    return f"it was trained by other code ({', '.join(changed[:4])} changed since)" if changed else None


def _destination(out_dir: Path) -> None:
    """Refuse an ``out_dir`` that is a file or a non-empty folder other than an earlier export."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"{out_dir} is a file, not a folder: give a new or empty folder for the export")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / "export.json").is_file():
        raise ExportError(f"{out_dir} is not empty (and holds no earlier export): choose an empty or new folder; "
                          "nothing there was changed")


def _write_failed(e: BaseException, out_dir: Path) -> ExportError:
    """One line for a failure while writing or verifying the export (nothing of it is kept)."""
    import errno

    from lib.infra.checkpoint import is_disk_full

    if is_disk_full(e):
        return ExportError(f"no space left on the disk of {out_dir} while writing the export (nothing was kept): "
                           "free space there and run the same command again")
    if isinstance(e, OSError) and e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return ExportError(f"cannot write {out_dir} ({e.strerror}: {e.filename or out_dir}): choose a writable "
                           "folder (nothing was kept)")
    first = (str(e).strip().splitlines() or [""])[0][:200]
    return ExportError(f"the export written for {out_dir} failed its check when loaded back ({type(e).__name__}: "
                       f"{first}) and was removed: run the same command again")


def export_run(run_dir, out_dir, *, load, seed: int = 0) -> dict:
    """Write ``run_dir``'s EMA weights as a diffusers folder ``out_dir``; returns ``{"out", "max_abs_diff"}``.

    ``load(run_dir)`` gives the run's EMA UNet (lib.pretrained.load_unet, passed in: lib.pretrained
    imports this module).

    Raises :class:`ExportError` for a run diffusers cannot represent, or when the reloaded model's ε
    differs from the run's by more than :data:`TOLERANCE`."""
    import os
    import shutil

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if not ((run_dir / "config.json").is_file() and (run_dir / "final.pt").is_file()):
        raise ExportError(f"{run_dir} is not a finished lib.train run (needs config.json and final.pt): train it "
                          "to the end first, or give the run's folder")
    _destination(out_dir)
    full = load_json(run_dir / "config.json")
    cfg = full.model
    if cfg.kind != "unet":
        raise ExportError(f"{run_dir}: model.kind is {cfg.kind!r}; only UNet runs map onto diffusers' UNet2DModel")
    if not cfg.resamp_with_conv:
        raise ExportError(f"{run_dir}: model.resamp_with_conv is false; UNet2DModel's resamplers are convolutions")
    older = _older_code(run_dir, full)
    if older:
        raise ExportError(f"{run_dir}: {older}; run its training command again (it retrains the run with today's "
                          "code), then export")
    try:
        from diffusers import DDIMScheduler, UNet2DModel
    except ImportError:
        raise ExportError("exporting needs diffusers (it is in requirements.txt: make venv)") from None
    model, _ = load(run_dir)
    try:
        groups = _groups(model)
    except ExportError as e:
        raise ExportError(f"{run_dir}: {e}") from None
    dcfg = diffusers_config(cfg, groups)
    dmodel = UNet2DModel(**dcfg)
    dmodel.load_state_dict(_ours_to_diffusers(model.state_dict(), dmodel, len(cfg.ch_mult)), strict=True)
    # Written beside out_dir under a temporary name, read back as a user would (diffusers' ε within TOLERANCE,
    # this project's loader the run's weights exactly, the scheduler and card), and only then renamed into
    # place: a failed or interrupted export leaves nothing that looks like one.
    tmp = out_dir.parent / f".{out_dir.name}.export-{os.getpid()}"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        dmodel.save_pretrained(str(tmp), safe_serialization=True)
        d = full.diffusion
        DDIMScheduler(num_train_timesteps=d.T, beta_start=d.beta_start, beta_end=d.beta_end,
                      beta_schedule="linear").save_pretrained(str(tmp))
        (tmp / "README.md").write_text(model_card(run_dir, full, groups))
        diff = max_eps_difference(model, UNet2DModel.from_pretrained(str(tmp), low_cpu_mem_usage=False).eval(), cfg,
                                  d.T, seed=seed)
        back, _ = load(tmp)  # the import path reads exactly the run's weights
        ours, theirs = model.state_dict(), back.state_dict()
        if ours.keys() != theirs.keys() or not all(torch.equal(ours[k], theirs[k]) for k in ours):
            raise ValueError("the weights read back differ from the run's")
        if diff > TOLERANCE:
            raise ValueError(f"the exported model's ε differs from the run's by {diff:.3g} > {TOLERANCE}")
        sched = DDIMScheduler.from_pretrained(str(tmp))
        if sched.config.num_train_timesteps != d.T or not (tmp / "README.md").read_text().startswith("---\n"):
            raise ValueError("the written scheduler or model card does not read back as written")
        (tmp / "export.json").write_text(json.dumps({"run": run_dir.name, "max_abs_eps_diff": diff}, indent=1) + "\n")
        old = out_dir.parent / f".{out_dir.name}.replaced-{os.getpid()}"
        if out_dir.exists():  # an earlier export (see _destination): replaced only now, by a verified one
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    except Exception as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _write_failed(e, out_dir) from None
    return {"out": out_dir, "max_abs_diff": diff}


ARXIV_ID = "2401.01520"  # S²-DMs: Skip-Step Diffusion Models (Wang & Li)


def run_fingerprint(run: dict) -> str:
    """One short hash of the recipe fingerprint a run recorded (run.json's ``code``, lib.recipe.training_code)."""
    return hashlib.sha256(json.dumps(run.get("code") or {}, sort_keys=True).encode()).hexdigest()[:16]


def model_card(run_dir: Path, cfg, groups: int) -> str:
    """The folder's ``README.md``: the Hub's YAML metadata, then how the run was trained and measured.

    The measurement is ``run_dir/metric.json`` where the run has one (``{"name", "value", "lo", "hi",
    "covers"}``: a value with its interval and what the interval covers); else the card says none."""
    run = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").is_file() else {}
    final = json.loads((run_dir / "final.json").read_text()) if (run_dir / "final.json").is_file() else {}
    arm, steps = run.get("arm", final.get("arm", "unknown")), final.get("step", cfg.train.steps)
    m = json.loads((run_dir / "metric.json").read_text()) if (run_dir / "metric.json").is_file() else None
    measured = (f"{m['name']} {m['value']:.4g} [{m['lo']:.4g}, {m['hi']:.4g}] ({m.get('covers', 'interval')})"
                if m else "none: this run directory records no measurement (the experiment's tables are under "
                          f"figures/{cfg.profile}/ of the project)")
    m_yaml = (f"model-index:\n- name: {run_dir.name}\n  results:\n  - task:\n      type: unconditional-image-generation\n"
              f"    dataset:\n      name: {cfg.data.dataset}\n      type: {cfg.data.dataset}\n    metrics:\n"
              f"    - type: {m['name']}\n      value: {m['value']}\n") if m else ""
    d, command = cfg.diffusion, run.get("command") or "unknown"
    head, _, rest = command.partition(" ")
    if head.replace("\\", "/").endswith("lib/train.py"):  # sys.argv[0] under `python -m`: this machine's path
        command = f"python -m lib.train {rest}"
    return f"""---
library_name: diffusers
pipeline_tag: unconditional-image-generation
tags:
- arxiv:{ARXIV_ID}
- diffusion
- s2dm
- arm:{arm}
- profile:{cfg.profile}
datasets:
- {cfg.data.dataset}
{m_yaml}---

# {run_dir.name}: a `{arm}` run of the S²-DMs companion

A diffusers `UNet2DModel` and `DDIMScheduler` exported from a run of the reproducible companion to
*S²-DMs: Skip-Step Diffusion Models* (Wang & Li, [arXiv {ARXIV_ID}](https://arxiv.org/abs/{ARXIV_ID})).

| | |
|---|---|
| arm | `{arm}` (baseline: L_0; s2dm: τL_0 + (1−τ)L_skip with skip {cfg.loss.skip}, τ {cfg.loss.tau}) |
| profile | `{cfg.profile}` |
| training steps | {steps} (batch {cfg.train.batch_size}, lr {cfg.train.lr}, EMA decay {cfg.train.ema_decay}) |
| data | {cfg.data.dataset} at {cfg.data.image_size}×{cfg.data.image_size}, {cfg.data.n_train or 'all'} images |
| model | {cfg.model.ch} channels × {list(cfg.model.ch_mult)}, {groups} GroupNorm groups |
| schedule | linear β from {d.beta_start} to {d.beta_end}, T = {d.T} |
| recipe fingerprint | `{run_fingerprint(run)}` (lib.recipe.training_code, as run.json records it) |
| measured | {measured} |
| command | `{command}` |

```python
from diffusers import DDIMPipeline, DDIMScheduler, UNet2DModel
pipe = DDIMPipeline(UNet2DModel.from_pretrained("."), DDIMScheduler.from_pretrained("."))
images = pipe(batch_size=16, num_inference_steps=50).images
```
"""


@torch.no_grad()
def max_eps_difference(ours, theirs, cfg, T: int, *, seed: int = 0, n: int = 8) -> float:
    """max |ε_ours(x, t) − ε_diffusers(x, t)| over ``n`` Gaussian inputs at timesteps spread over [0, T)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cfg.in_channels, cfg.resolution, cfg.resolution, generator=g)
    t = torch.linspace(0, T - 1, n).round().long()
    a = ours.float().eval()(x, t)
    b = theirs.float()(x, t).sample
    return float((a - b).abs().max())
