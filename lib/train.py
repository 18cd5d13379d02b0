"""Training: one code path for every arm (baseline = S²-DM with τ = 1), resumable bit for bit.

    python -m lib.train --profile cpu --arm s2dm --out data/runs/cpu/s2dm [--set train.steps=500 ...]

writes ``DIR/config.json``, ``DIR/run.json``, ``DIR/loss.csv``, checkpoints ``DIR/ckpt-<step>.pt``
(atomic, the last ``train.keep_ckpts`` kept) and the final EMA weights ``DIR/final.pt`` (a state
dict). Started again with the same arguments it resumes from the newest readable checkpoint (model,
EMA, optimiser, step, data order, every RNG state), so a killed run ends with the same weights as
an uninterrupted one (on CPU). Under ``torchrun`` it trains with DistributedDataParallel.

The recipe is the DDIM code's (docs/method.md §1): Adam, gradient-norm clip, EMA, antithetic t, random
horizontal flip, data in [-1, 1].
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from lib import checkpoint as ckpt
from lib.config import Config, ConfigError, get_config, load_json, with_overrides
from lib.factory import build_model, resolve_device, schedule_of
from lib.losses import s2dm_loss
from lib.related import cdm

ARMS = ("baseline", "s2dm", "cdm")
# Keys that may change between a run and its resumption (they do not alter the trajectory).
RESUMABLE_KEYS = {"train.steps", "train.ckpt_every", "train.log_every", "train.keep_ckpts", "train.device",
                  "train.compile", "sample", "eval", "toy", "experiment", "profile"}
LOG_FIELDS = ("step", "loss", "l0", "lskip", "lr", "grad_norm", "images_per_s")


class NonFiniteLoss(FloatingPointError):
    """The loss became NaN or infinite: the message names the step and the last good checkpoint."""


# ---------------------------------------------------------------------------- building blocks
class BatchSource:
    """Mini-batches with a resumable order: epoch permutations of an image set, or fresh toy samples.

    All randomness comes from ``generator`` (CPU) so its state, with the epoch permutation and the
    position in it, restores the data order exactly. Under DDP every rank draws the same global
    permutation and flip mask and keeps its own slice."""

    def __init__(self, cfg: Config, device, generator: torch.Generator, rank: int = 0, world: int = 1):
        from lib import data

        self.cfg, self.device, self.g, self.rank, self.world = cfg, device, generator, rank, world
        self.toy = cfg.data.dataset in data.TOY_DATASETS
        if self.toy:
            self.gmm = data.toy_distribution(cfg.data.dataset)
        else:
            images, _ = data.load_images(cfg.data)
            self.images = images.to(device)  # uint8 on the device: no loader workers, no host copies
            self.perm, self.pos = self._new_perm(), 0

    def _new_perm(self):
        return torch.randperm(len(self.images), generator=self.g)

    def next(self, global_batch: int) -> torch.Tensor:
        lb = global_batch // self.world
        if self.toy:
            x = self.gmm.sample(global_batch, generator=self.g)
            return x[self.rank * lb:(self.rank + 1) * lb].to(self.device)
        if self.pos + global_batch > len(self.perm):  # drop the ragged end of an epoch
            self.perm, self.pos = self._new_perm(), 0
        idx = self.perm[self.pos:self.pos + global_batch]
        self.pos += global_batch
        flip = torch.rand(global_batch, generator=self.g) < 0.5
        idx, flip = idx[self.rank * lb:(self.rank + 1) * lb], flip[self.rank * lb:(self.rank + 1) * lb]
        x = self.images[idx.to(self.device)].float().div_(127.5).sub_(1.0)
        if self.cfg.data.random_flip:
            x = torch.where(flip.to(self.device).view(-1, 1, 1, 1), x.flip(-1), x)
        return x

    def state_dict(self) -> dict:
        s = {"generator": self.g.get_state()}
        if not self.toy:
            s.update(perm=self.perm, pos=self.pos)
        return s

    def load_state_dict(self, s: dict):
        self.g.set_state(s["generator"])
        if not self.toy:
            self.perm, self.pos = s["perm"], int(s["pos"])


def make_loss(cfg: Config, arm: str, schedule):
    """``loss_fn(model, x0, generator, parts) -> per-sample loss`` for an arm."""
    if arm not in ARMS:
        raise ConfigError(f"unknown arm {arm!r}; valid arms: {', '.join(ARMS)}")
    L = cfg.loss
    if arm == "cdm":
        return cdm.make_loss(cfg, schedule)  # the Consistent-Diffusion-Models arm (lib.related)
    tau = 1.0 if arm == "baseline" else L.tau

    def loss_fn(model, x0, generator, parts):
        return s2dm_loss(model, x0, schedule, skip=L.skip, tau=tau, same_noise=L.same_noise,
                         generator=generator, parts=parts)

    return loss_fn


def train_step(model, opt, ema, loss_fn, x0, generator, *, net=None, grad_clip: float = 1.0, autocast=None,
               check_finite: bool = False):
    """One optimisation step of every arm: mean of the per-sample loss, backward, gradient-norm clip,
    Adam, EMA update. Returns ``(loss, parts, grad_norm)``, all detached.

    ``net`` is what the loss calls (``model`` itself, or its DDP/compiled wrapper); clipping and the
    EMA act on ``model``'s parameters. With ``check_finite`` a non-finite loss raises
    :class:`NonFiniteLoss` *before* the optimiser step, so the weights never take a NaN update (a
    check syncs a GPU, so the caller decides how often)."""
    parts = {}
    with autocast if autocast is not None else contextlib.nullcontext():
        loss = loss_fn(net if net is not None else model, x0, generator, parts).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    gn = (torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip) if grad_clip > 0
          else torch.zeros((), device=loss.device))
    if check_finite and not torch.isfinite(loss.detach()):
        err = NonFiniteLoss(f"the loss is {loss.item()}")
        err.value = loss.item()
        raise err
    opt.step()
    if ema is not None:
        ema.update(model)
    return loss.detach(), parts, gn.detach()


class EMA:
    """Exponential moving average of the parameters (DDPM: decay 0.9999), kept in float32."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items()}
        self._float_keys = [k for k, v in model.state_dict().items() if v.dtype.is_floating_point]

    @torch.no_grad()
    def update(self, model: torch.nn.Module):
        state = model.state_dict()
        # One fused kernel over all tensors instead of hundreds of small ones per step (GPU).
        torch._foreach_lerp_([self.shadow[k] for k in self._float_keys],
                             [state[k].float() for k in self._float_keys], 1.0 - self.decay)
        for k, v in state.items():
            if not v.dtype.is_floating_point:
                self.shadow[k].copy_(v)

    def state_dict(self):
        return self.shadow

    def load_state_dict(self, s):
        for k in self.shadow:
            self.shadow[k].copy_(s[k])


def seconds_per_step(cfg: Config, arm: str, n_steps: int = 3, warmup: int = 1, device="cpu") -> float:
    """Wall time of one :func:`train_step` of ``arm`` under ``cfg`` (loss, backward, clip, Adam, EMA).

    A fresh model of ``cfg.model`` on one real batch of ``cfg.data``, under ``cfg.train.amp`` as
    :func:`train` runs it; ``warmup`` untimed steps first. Only ratios between arms measured in the
    same process are meaningful (notebook 06: the cost of the CDM arm)."""
    from lib import data

    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    ema = EMA(model, cfg.train.ema_decay)
    if cfg.data.dataset in data.TOY_DATASETS:
        x0 = data.toy_distribution(cfg.data.dataset).sample(cfg.train.batch_size, generator=torch.Generator().manual_seed(0))
    else:
        x0 = data.to_model_range(data.load_images(cfg.data)[0][:cfg.train.batch_size])
    x0 = x0.float().to(device)
    loss_fn = make_loss(cfg, arm, schedule_of(cfg))
    g = torch.Generator(device=device).manual_seed(0)
    autocast = torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=cfg.train.amp == "bf16")
    elapsed = 0.0
    for i in range(warmup + n_steps):
        t0 = time.perf_counter()
        train_step(model, opt, ema, loss_fn, x0, g, grad_clip=cfg.train.grad_clip, autocast=autocast)
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            elapsed += time.perf_counter() - t0
    return elapsed / n_steps


# ---------------------------------------------------------------------------- distributed
def _dist_info():
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and os.environ.get("S2DM_DDP_BACKEND") != "gloo" else "gloo"
        dist.init_process_group(backend)
    rank = dist.get_rank() if dist.is_initialized() else 0
    return rank, (dist.get_world_size() if dist.is_initialized() else 1)


def _gather(obj, world):
    if world == 1:
        return [obj]
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


# ---------------------------------------------------------------------------- the loop
def _check_config(out: Path, cfg: Config):
    """A resumed run must have the same trajectory-defining config as the one on disk."""
    f = out / "config.json"
    if not f.exists():
        return
    old = load_json(f).to_dict()
    new = cfg.to_dict()
    diff = [f"{s}.{k}" for s in new if isinstance(new[s], dict) for k in new[s]
            if old.get(s, {}).get(k) != new[s][k] and s not in RESUMABLE_KEYS and f"{s}.{k}" not in RESUMABLE_KEYS]
    if diff:
        raise ConfigError(f"{out} holds a run with a different configuration ({', '.join(diff)}); "
                          f"resume it with the same settings, or train into a new --out directory")


def _same_arm(out: Path, arm: str):
    f = out / "run.json"
    if f.exists() and json.loads(f.read_text()).get("arm") != arm:
        raise ConfigError(f"{out} holds a run of arm {json.loads(f.read_text()).get('arm')!r}, not {arm!r}; "
                          f"use another --out directory")


def train(cfg: Config, arm: str, out_dir, *, progress: bool = True) -> Path:
    """Train ``arm`` under ``cfg`` into ``out_dir``; resume when checkpoints exist. Returns final.pt."""
    from lib import data as data_mod

    out = Path(out_dir)
    if arm not in ARMS:
        raise ConfigError(f"unknown arm {arm!r}; valid arms: {', '.join(ARMS)}")
    toy = cfg.data.dataset in data_mod.TOY_DATASETS
    if toy != (cfg.model.kind == "mlp"):
        raise ConfigError("toy 2-D datasets need model.kind='mlp' and image datasets model.kind='unet' "
                          "(use lib.config.toy_config(cfg) for the toy experiment)")
    rank, world = _dist_info()
    T = cfg.train
    if T.batch_size % world:
        raise ConfigError(f"train.batch_size={T.batch_size} is not divisible by the {world} processes")
    _check_config(out, cfg)
    _same_arm(out, arm)
    final = out / "final.pt"
    if final.exists() and (out / "config.json").exists():
        done = ckpt.list_checkpoints(out)
        if done and int(ckpt.CKPT_RE.match(done[-1].name).group(1)) >= T.steps:
            return final  # finished earlier: nothing to redo

    device = resolve_device(T.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    torch.manual_seed(T.seed)  # same initial weights on every rank and in every arm
    schedule = schedule_of(cfg)
    model = build_model(cfg.model).to(device)
    if world > 1:  # the global RNG now only drives dropout: give each rank its own masks
        torch.manual_seed(T.seed + 1_000_003 * rank)
    if T.channels_last and not toy:
        model = model.to(memory_format=torch.channels_last)
    ema = EMA(model, T.ema_decay)
    fused = T.fused_adam and device.type == "cuda"
    opt = torch.optim.Adam(model.parameters(), lr=T.lr, betas=(T.beta1, T.beta2), eps=T.eps,
                           weight_decay=T.weight_decay, **({"fused": True} if fused else {}))
    g_data = torch.Generator().manual_seed(T.seed + 1)
    g_noise = torch.Generator(device=device).manual_seed(T.seed * 7919 + 2 + rank)
    source = BatchSource(cfg, device, g_data, rank, world)
    loss_fn = make_loss(cfg, arm, schedule)

    start = 0
    path, state = ckpt.load_latest(out, map_location=device)
    if state is not None:
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        source.load_state_dict(state["data"])
        rng = state["rng"]
        start = int(state["step"])
        if len(rng) == world:  # the same process layout: continue every rank's streams exactly
            mine = rng[rank]
            g_noise.set_state(mine["noise"].cpu())
            torch.set_rng_state(mine["cpu"].cpu())
            if device.type == "cuda" and "cuda" in mine:
                torch.cuda.set_rng_state(mine["cuda"].cpu(), device)
        else:  # another number of processes: fresh, distinct streams per rank (not bit-exact)
            g_noise.manual_seed((T.seed * 1_000_003 + rank) * 104_729 + start)
            torch.manual_seed((T.seed * 1_000_003 + rank) * 104_729 + start + 1)
        if rank == 0:
            print(f"resuming {out} from {path.name} (step {start})", file=sys.stderr)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        ckpt.atomic_write_text(out / "config.json", cfg.to_json())
        ckpt.atomic_write_text(out / "run.json", json.dumps({
            "arm": arm, "world_size": world, "device": str(device), "torch": torch.__version__,
            "python": platform.python_version(), "command": " ".join(sys.argv)}, indent=2))
        _truncate_log(out / "loss.csv", start)

    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    if T.compile:
        net = torch.compile(net)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=T.amp == "bf16")
    check_every = 1 if device.type == "cpu" else T.log_every  # a finiteness check syncs the GPU
    acc = {k: torch.zeros((), device=device) for k in ("loss", "l0", "lskip", "grad_norm")}
    n_acc, t0, last_good = 0, time.perf_counter(), path
    model.train()
    bar = tqdm(range(start, T.steps), initial=start, total=T.steps, desc=f"train {arm}",
               disable=not progress or rank != 0, mininterval=1.0)
    for step in bar:
        x0 = source.next(T.batch_size)
        if T.channels_last and not toy:
            x0 = x0.contiguous(memory_format=torch.channels_last)
        lr = T.lr * min(1.0, (step + 1) / T.warmup) if T.warmup > 0 else T.lr
        for grp in opt.param_groups:
            grp["lr"] = lr
        try:
            loss, parts, gn = train_step(model, opt, ema, loss_fn, x0, g_noise, net=net, grad_clip=T.grad_clip,
                                         autocast=autocast, check_finite=(step + 1) % check_every == 0)
        except NonFiniteLoss as e:
            _nonfinite(e.value, step, arm, last_good)
        acc["loss"] += loss
        acc["l0"] += parts.get("l0", loss).mean()
        acc["lskip"] += parts.get("lskip", torch.zeros((), device=device)).mean()
        acc["grad_norm"] += gn.float()
        n_acc += 1
        done = step + 1
        if done % T.log_every == 0 or done == T.steps:
            if world > 1:  # log the whole global batch, not rank 0's share
                for v in acc.values():
                    dist.all_reduce(v)
                    v /= world
            vals = {k: (v / n_acc).item() for k, v in acc.items()}
            if not math.isfinite(vals["loss"]):
                _nonfinite(vals["loss"], step, arm, last_good)
            dt = time.perf_counter() - t0
            if rank == 0:
                _append_log(out / "loss.csv", {"step": done, **vals, "lr": lr,
                                               "images_per_s": n_acc * T.batch_size / max(dt, 1e-9)})
                bar.set_postfix(loss=f"{vals['loss']:.4f}")
            for v in acc.values():
                v.zero_()
            n_acc, t0 = 0, time.perf_counter()
        if done % T.ckpt_every == 0 or done == T.steps:
            if not torch.isfinite(loss):
                _nonfinite(loss, step, arm, last_good)
            rng = {"noise": g_noise.get_state(), "cpu": torch.get_rng_state()}
            if device.type == "cuda":
                rng["cuda"] = torch.cuda.get_rng_state(device)
            rngs = _gather(rng, world)
            if rank == 0:
                last_good = ckpt.save_checkpoint(out, done, {
                    "step": done, "model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                    "data": source.state_dict(), "rng": rngs, "config": cfg.to_dict(), "arm": arm}, T.keep_ckpts)
    bar.close()
    if rank == 0:
        ckpt.atomic_save(ema.state_dict(), final)
    if world > 1:
        dist.barrier()
    return final


def _nonfinite(loss, step, arm, last_good):
    v = loss.item() if torch.is_tensor(loss) else loss
    where = f"the last good checkpoint is {last_good}" if last_good else "no checkpoint was written yet"
    raise NonFiniteLoss(f"training ({arm}) stopped: the loss is {v} at step {step + 1}; {where}. Nothing after it "
                        f"was saved. Lower train.lr, raise train.warmup or check the data, and train into a new --out.")


def _truncate_log(path: Path, upto: int):
    """Keep only the log rows of steps <= ``upto`` (a resumed run rewrites what follows)."""
    if not path.exists():
        return
    with open(path) as f:
        rows = [r for r in csv.DictReader(f) if int(r["step"]) <= upto]
    ckpt.atomic_write_text(path, ",".join(LOG_FIELDS) + "\n" + "".join(
        ",".join(r[k] for k in LOG_FIELDS) + "\n" for r in rows))


def _append_log(path: Path, row: dict):
    new = not path.exists()
    with open(path, "a") as f:
        if new:
            f.write(",".join(LOG_FIELDS) + "\n")
        f.write(",".join(f"{row[k]:.6g}" if isinstance(row[k], float) else str(row[k]) for k in LOG_FIELDS) + "\n")


def read_log(run_dir) -> dict[str, list[float]]:
    """``loss.csv`` as columns of floats."""
    with open(Path(run_dir) / "loss.csv") as f:
        rows = list(csv.DictReader(f))
    return {k: [float(r[k]) for r in rows] for k in LOG_FIELDS}


# ---------------------------------------------------------------------------- command line
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
    a = p.parse_args(argv)
    try:
        cfg = get_config(a.profile)
        if a.toy:  # overrides apply to the toy configuration (train.steps is then the toy's)
            from lib.config import toy_config
            cfg = toy_config(cfg)
        cfg = with_overrides(cfg, a.overrides)
        final = train(cfg, a.arm, a.out, progress=not a.quiet)
    except (ConfigError, NonFiniteLoss, ckpt.CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # missing data etc.: message first, no raw download traceback
        from lib.data import DatasetMissing
        if isinstance(e, DatasetMissing):
            print(f"error: {e}", file=sys.stderr)
            return 2
        raise
    if int(os.environ.get("RANK", "0")) == 0:
        print(final)
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
