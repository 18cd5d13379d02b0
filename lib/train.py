"""The training runner: the loop, resume, checkpoints and command line around lib.recipe's step.

    python -m lib.train --profile cpu --arm s2dm --out data/runs/cpu/s2dm [--set train.steps=500 ...]

writes ``DIR/config.json``, ``DIR/run.json``, ``DIR/loss.csv`` (lib.infra.runlog), checkpoints ``DIR/ckpt-<step>.pt``
(atomic, the last ``train.keep_ckpts`` kept) and the final EMA weights ``DIR/final.pt`` (a state
dict) with ``DIR/final.json`` (its step, config, code fingerprint and checksum; lib.infra.rundir). Started
again with the same arguments it resumes from the newest checkpoint of this run (model, EMA,
optimiser, step, data order, every RNG state), so a killed run ends with the same weights as an
uninterrupted one (on CPU). One process trains a directory at a time (a lock); a run made by other
training code is moved aside and trained again. Under ``torchrun`` it trains with DDP (the process's
rank, world size and device: lib.infra.distributed's run context).

What a step computes (loss, optimiser, EMA, data order: the DDIM code's recipe) is lib.recipe, and so is
the code fingerprint a run records: editing this file never retrains a run.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import math
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.distributed as dist

from lib import recipe
from lib.data import DatasetMissing
from lib.factory import resolve_device
from lib.infra import checkpoint as ckpt
from lib.infra import distributed, rehearsal, rundir, runlog
from lib.infra.config import Config, ConfigError, get_config, toy_config, with_overrides
from lib.infra.distributed import RunContext
from lib.infra.progress import tqdm
from lib.recipe import ARMS, NonFiniteLoss, TrainState


# ---------------------------------------------------------------------------- the parts of train()
def _prepare(out: Path, cfg: Config, arm: str, code: dict) -> bool:
    """Under the lock: sweep killed writes, move a stale run aside, refuse another run. True = finished."""
    swept = ckpt.sweep_temp(out)
    if swept:
        print(f"{out}: removed {len(swept)} temporary file(s) left by an interrupted write", file=sys.stderr)
    reason = rundir.check_reusable(out, cfg, arm, code)
    if reason:
        rundir.supersede(out, reason)
        rundir.reseed(out)
    meta = rundir.read_json(out / "final.json")
    if meta and meta.get("step", 0) > cfg.train.steps:
        raise ConfigError(f"{out} holds a run trained to step {meta['step']}; train.steps={cfg.train.steps} would label "
                          f"it wrongly: use train.steps >= {meta['step']}, or another --out")
    problem = rundir.final_problem(out, cfg, arm)
    if problem and (out / "final.pt").exists():
        print(f"{out}: {problem}; training continues from its last checkpoint", file=sys.stderr)
    return problem is None


def _shapes_match(model: torch.nn.Module, sd: dict) -> bool:
    own = model.state_dict()
    return own.keys() == sd.keys() and all(own[k].shape == sd[k].shape for k in own)


def _resume(out: Path, st: TrainState, cfg: Config, arm: str, code: dict):
    """Load the newest checkpoint of *this* run (arm, trajectory config and code as recorded in it);
    foreign or unreadable ones are skipped with a warning. Returns ``(start_step, checkpoint or None)``."""
    files = ckpt.list_checkpoints(out)
    for path in reversed(files):
        try:
            state = ckpt.safe_load(path, map_location=st.device)
        except ckpt.CheckpointError as e:
            warnings.warn(f"{e} -- falling back to the previous checkpoint", stacklevel=3)
            continue
        why = rundir.mismatch(state, path, cfg, arm, code)
        if not why and not _shapes_match(st.model, state["model"]):
            why = ["model shapes"]
        if why:
            warnings.warn(f"{path} is not a checkpoint of this run (differs in {', '.join(why)}); skipping it", stacklevel=3)
            continue
        start = int(state["step"])
        if start > cfg.train.steps:
            raise ConfigError(f"{out} holds training up to step {start} > train.steps={cfg.train.steps}: use "
                              f"train.steps >= {start}, or another --out")
        st.model.load_state_dict(state["model"])
        st.ema.load_state_dict(state["ema"], num_updates=start)
        st.opt.load_state_dict(state["opt"])
        st.source.load_state_dict(state["data"])
        _restore_rng(st, state["rng"], cfg.train.seed, start)
        if st.ctx.main:
            print(f"resuming {out} from {path.name} (step {start})", file=sys.stderr)
        return start, path
    if files:
        warnings.warn(f"{out}: none of its {len(files)} checkpoint(s) can continue this run; training starts over "
                      f"from step 0", stacklevel=3)
    return 0, None


def _restore_rng(st: TrainState, rng: list, seed: int, start: int):
    rank = st.ctx.rank
    if len(rng) == st.ctx.world:  # the same process layout: continue every rank's streams exactly
        mine = rng[rank]
        st.g_noise.set_state(mine["noise"].cpu())
        torch.set_rng_state(mine["cpu"].cpu())
        if st.device.type == "cuda" and "cuda" in mine:
            torch.cuda.set_rng_state(mine["cuda"].cpu(), st.device)
    else:  # another number of processes: fresh, distinct streams per rank (not bit-exact)
        st.g_noise.manual_seed((seed * 1_000_003 + rank) * 104_729 + start)
        torch.manual_seed((seed * 1_000_003 + rank) * 104_729 + start + 1)


def _loop(st: TrainState, t, out: Path, start: int, last_good, meta: dict, progress: bool):
    """Steps ``start`` .. ``t.steps`` of a ``train`` section (lib.recipe.step), the log (global-batch
    means) every ``t.log_every`` steps, a checkpoint every ``t.ckpt_every``."""
    check_every = 1 if st.device.type == "cpu" else t.log_every  # a finiteness check syncs the GPU
    terms = ("l0", "lskip", "consistency")  # the parts of the loss an arm reports (0 where it has none)
    acc = {k: torch.zeros((), device=st.device) for k in ("loss", *terms, "grad_norm")}
    n_acc, t0 = 0, time.perf_counter()
    autocast = recipe.make_autocast(t, st.device)
    st.model.train()
    bar = tqdm(range(start, t.steps), initial=start, total=t.steps, desc=f"train {meta['arm']}",
               disable=not progress or not st.ctx.main, mininterval=1.0)
    for step in bar:
        try:
            loss, parts, gn, lr = recipe.step(st, t, step, autocast, check_finite=(step + 1) % check_every == 0)
        except NonFiniteLoss as e:
            _nonfinite(e.value, step, meta["arm"], last_good)
        zero = torch.zeros((), device=st.device)
        acc["loss"] += loss
        acc["grad_norm"] += gn.float()
        for k in terms:
            acc[k] += parts.get(k, loss if k == "l0" else zero).mean()
        n_acc, done = n_acc + 1, step + 1
        if done % t.log_every == 0 or done == t.steps:
            vals = _log_means(acc, n_acc, st.ctx.world)
            if not math.isfinite(vals["loss"]):
                _nonfinite(vals["loss"], step, meta["arm"], last_good)
            if st.ctx.main:
                runlog.append_row(out, {"step": done, **vals, "lr": lr,
                                               "images_per_s": n_acc * t.batch_size / max(time.perf_counter() - t0, 1e-9)})
                bar.set_postfix(loss=f"{vals['loss']:.4f}")
            n_acc, t0 = 0, time.perf_counter()
        if done % t.ckpt_every == 0 or done == t.steps:
            if not torch.isfinite(loss):
                _nonfinite(loss, step, meta["arm"], last_good)
            last_good = _save(st, out, done, t.keep_ckpts, meta) or last_good
    bar.close()


def _log_means(acc: dict, n: int, world: int) -> dict:
    """The accumulated sums as means over the steps (and the ranks: the whole global batch); resets them."""
    if world > 1:
        for v in acc.values():
            dist.all_reduce(v)
            v /= world
    vals = {k: (v / n).item() for k, v in acc.items()}
    for v in acc.values():
        v.zero_()
    return vals


def _save(st: TrainState, out: Path, step: int, keep: int, meta: dict):
    """Checkpoint ``step`` (every rank's RNG streams gathered; rank 0 writes). Returns its path on rank 0."""
    rng = {"noise": st.g_noise.get_state(), "cpu": torch.get_rng_state()}
    if st.device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(st.device)
    rngs = st.ctx.gather(rng)
    if not st.ctx.main:
        return None
    return ckpt.save_checkpoint(out, step, {
        "step": step, "model": st.model.state_dict(), "ema": st.ema.state_dict(), "opt": st.opt.state_dict(),
        "data": st.source.state_dict(), "rng": rngs, **meta}, keep)


def _wrap(st: TrainState, t):
    """What the loss calls: the model, under DDP and/or torch.compile."""
    if st.ctx.world > 1:
        st.net = torch.nn.parallel.DistributedDataParallel(
            st.model, device_ids=[st.device] if st.device.type == "cuda" else None)
    if t.compile:
        st.net = torch.compile(st.net)


# ---------------------------------------------------------------------------- train
def train(cfg: Config, arm: str, out_dir, *, progress: bool = True, init_from=None) -> Path:
    """Train ``arm`` under ``cfg`` into ``out_dir``; resume when this run's checkpoints exist. Returns
    the verified ``final.pt``. The directory is claimed first (one process at a time), a finished run
    of the same config and code is returned as it is, and a run of other training code is moved aside.

    ``init_from``: start from pretrained weights (a lib.pretrained source: a path or a checkpoint name;
    model and EMA both), recorded with its MD5 in run.json; a run directory started from other weights
    is refused."""
    out = Path(out_dir)
    if arm not in ARMS:
        raise ConfigError(f"unknown arm {arm!r}; valid arms: {', '.join(ARMS)}")
    t = cfg.train
    ctx = distributed.join(resolve_device(t.device))
    if t.batch_size % ctx.world:
        raise ConfigError(f"train.batch_size={t.batch_size} is not divisible by the {ctx.world} processes")
    code = recipe.training_code(cfg.model.kind, arm)
    with _claimed(out, ctx):
        moved = _same_init(out, init_from, cfg)
        if moved:  # its source was retrained: the fine-tune is superseded (moved aside), as a stale run is
            ctx.on_main(lambda: rundir.supersede(out, moved) and None, rundir.RunDirError)
        # 1. the directory: this run's, finished, stale (moved aside) or another run's (refused)
        if ctx.on_main(lambda: _prepare(out, cfg, arm, code), rundir.RunDirError):
            return out / "final.pt"
        # 2. fresh state, then this run's newest checkpoint
        st = recipe.build_state(cfg, arm, ctx, lambda model: _init_from(model, init_from, cfg))
        start, last_good = _resume(out, st, cfg, arm, code)
        if ctx.main:
            rundir.write_run_files(out, cfg, arm, code, {
                "world_size": ctx.world, "device": str(st.device), "torch": torch.__version__,
                "python": platform.python_version(), "command": " ".join(sys.argv),
                **rundir.kept_init(out, st.init_record, start)})
            runlog.truncate(out, start)
        # 3. the loop
        _wrap(st, t)
        meta = {"config": cfg.to_dict(), "arm": arm, "code": code}
        _loop(st, t, out, start, last_good, meta, progress)
        # 4. finish: final.pt written, read back and recorded in final.json
        final = out / "final.pt"
        if ctx.main:
            rundir.write_final(out, st.ema.state_dict(), t.steps, cfg, arm, code)
        if ctx.world > 1:
            dist.barrier()
    return final


@contextlib.contextmanager
def _claimed(out: Path, ctx: RunContext):
    """Rank 0 holds the run directory's lock for the whole run; every rank learns if it failed."""
    with contextlib.ExitStack() as stack:
        ctx.on_main(lambda: stack.enter_context(rundir.claim(out)) and None, rundir.RunDirError)
        yield


def _init_from(model, source, cfg: Config):
    if source is None:
        return None
    from lib.pretrained import init_weights  # the fine-tune hook; lib.pretrained owns the logic
    return init_weights(model, source, manifest=rehearsal.of(cfg))  # a rehearsal's fixture only where cfg names it


def _same_init(out: Path, source, cfg: Config) -> str | None:
    """A run directory holds one fine-tune: refuse to continue (or return) it from other initial weights.
    Returns why it is superseded when its source (the same path or name) now holds other weights."""
    recorded = (rundir.read_json(out / "run.json") or {}).get("init_from")
    if source is None or not (out / "run.json").exists():
        return None
    from lib.pretrained import file_md5, load_state

    md5 = file_md5(load_state(source, manifest=rehearsal.of(cfg))["path"])  # the weights file init_weights records
    if recorded is not None and recorded.get("md5") != md5 and recorded.get("source") == str(source):
        return (f"its initial weights {source} changed since it was fine-tuned (MD5 {recorded.get('md5')} then, "
                f"{md5} now)")
    if recorded is None or recorded.get("md5") != md5:
        was = f"{recorded['source']} (MD5 {recorded['md5']})" if recorded else "its own random initialisation"
        raise ConfigError(f"{out} holds a run started from {was}, not from {source} (MD5 {md5}); "
                          f"use another --out directory")


def _nonfinite(loss, step, arm, last_good):
    v = loss.item() if torch.is_tensor(loss) else loss
    where = f"the last good checkpoint is {last_good}" if last_good else "no checkpoint was written yet"
    raise NonFiniteLoss(f"training ({arm}) stopped: the loss is {v} at step {step + 1}; {where}. Nothing after it "
                        f"was saved. Lower train.lr, raise train.warmup or check the data, and train into a new --out.")


# ---------------------------------------------------------------------------- command line
def _os_error_line(e: OSError) -> str:
    """One line for an OS error: what, where, what to do (DiskFull carries its own)."""
    if isinstance(e, ckpt.DiskFull):
        return str(e)
    where = e.filename or "the run directory"
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"permission denied writing {where}: choose a writable --out, or fix the permissions there"
    if e.errno == errno.ENOTDIR:
        return f"{where}: a path component is a file, not a directory: choose another --out"
    return f"{e.strerror or e} ({where}): check the path and the disk, then run the same command again"


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m lib.train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", default="cpu", help="ci | cpu | gpu | paper")
    p.add_argument("--arm", required=True, choices=ARMS)
    p.add_argument("--out", required=True, help="run directory (resumed if it holds checkpoints)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. --set train.steps=1000 (repeatable)")
    p.add_argument("--toy", action="store_true", help="train the 2-D toy model of the profile (toy.* settings)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--init-from", default=None, metavar="SOURCE",
                   help="start from pretrained weights: a path or a lib.pretrained name (e.g. ema_cifar10)")
    a = p.parse_args(argv)
    try:
        cfg = get_config(a.profile)
        if a.toy:  # overrides apply to the toy configuration (train.steps is then the toy's)
            cfg = toy_config(cfg)
        cfg = with_overrides(cfg, a.overrides)
        final = train(cfg, a.arm, a.out, progress=not a.quiet, init_from=a.init_from)
    except (ConfigError, NonFiniteLoss, ckpt.CheckpointError, rundir.RunDirError, DatasetMissing) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as e:
        if type(e).__module__.startswith("lib.pretrained"):  # PretrainedError / PretrainedMissing: already one line
            print(f"error: {e}", file=sys.stderr)
            return 2
        if not isinstance(e, OSError):
            raise
        print(f"error: {_os_error_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        done = ckpt.list_checkpoints(a.out)
        print(f"interrupted: {a.out} keeps its checkpoints up to {done[-1].name if done else 'none (no step saved)'}; "
              f"run the same command again to resume", file=sys.stderr)
        return 130
    if int(os.environ.get("RANK", "0")) == 0:
        print(final)
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
