"""The training recipe: what one training step computes, for every arm (baseline = S²-DM with τ = 1).

The DDIM code's recipe (docs/method.md §1): Adam with a linear learning-rate warm-up, gradient-norm clip,
EMA, antithetic t, random horizontal flip, data in [-1, 1]. :func:`build_state` makes a run's fresh
state (seeded weights, EMA, optimiser, data order, noise stream), :func:`step` takes one step of it.
lib.train runs these (the loop, resume, checkpoints, the command line); :func:`training_code` is the
fingerprint of exactly this recipe (lib.infra.fingerprint), so editing the runner, a message or a
comment never retrains a run, and editing what a step computes always does.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch

from lib.data import BatchSource
from lib.factory import build_model, schedule_of
from lib.infra.config import Config, ConfigError
from lib.infra.distributed import RunContext
from lib.infra.fingerprint import recipe_fingerprint
from lib.losses import ip_loss, s2dm_loss
from lib.related import cdm

PAPER_ARMS = ("baseline", "s2dm")  # the paper's comparison (the baseline is the S²-DM loss with τ = 1)
# Every arm trained: the CDM arm is a neighbour (lib.related.cdm, notebook 06); the ip arm is DDPM input
# perturbation (lib.losses.ip_loss, loss.gamma), the other training-side shrinker of the dose–response test.
ARMS = PAPER_ARMS + ("cdm", "ip")


class NonFiniteLoss(FloatingPointError):
    """The loss became NaN or infinite: the message names the step and the last good checkpoint."""


# ---------------------------------------------------------------------------- the pieces of a step
def make_loss(cfg: Config, arm: str, schedule):
    """``loss_fn(model, x0, generator, parts) -> per-sample loss`` for an arm."""
    if arm not in ARMS:
        raise ConfigError(f"unknown arm {arm!r}; valid arms: {', '.join(ARMS)}")
    L = cfg.loss
    if arm == "cdm":
        return cdm.make_cdm_loss(cfg, schedule)  # the Consistent-Diffusion-Models arm (lib.related)
    if arm == "ip":
        def ip_fn(model, x0, generator, parts):
            return ip_loss(model, x0, schedule, gamma=L.gamma, generator=generator, parts=parts)

        return ip_fn
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
    """Exponential moving average of the parameters (DDPM: decay 0.9999), kept in float32.

    With ``rampup`` > 0 (EDM's ``ema_rampup_ratio``) the half-life, in steps, is at most ``rampup`` × the
    updates so far: h = min(ln ½ / ln decay, rampup · n) and β_n = ½^(1/h), so a short run does not keep
    its random initial weights in the average. ``rampup = 0`` is the plain EMA, β = decay, bit for bit."""

    def __init__(self, model: torch.nn.Module, decay: float, rampup: float = 0.0):
        self.decay, self.rampup, self.num_updates = decay, rampup, 0
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items()}
        self._float_keys = [k for k, v in model.state_dict().items() if v.dtype.is_floating_point]

    def beta(self, n: int) -> float:
        """The decay used by update number ``n`` (1, 2, ...)."""
        if self.rampup <= 0:
            return self.decay
        half_life = self.rampup * n if self.decay <= 0 else min(math.log(0.5) / math.log(self.decay), self.rampup * n)
        return 0.5 ** (1.0 / max(half_life, 1e-8))

    @torch.no_grad()
    def update(self, model: torch.nn.Module):
        self.num_updates += 1
        state = model.state_dict()
        # One fused kernel over all tensors instead of hundreds of small ones per step (GPU).
        torch._foreach_lerp_([self.shadow[k] for k in self._float_keys],
                             [state[k].float() for k in self._float_keys], 1.0 - self.beta(self.num_updates))
        for k, v in state.items():
            if not v.dtype.is_floating_point:
                self.shadow[k].copy_(v)

    def state_dict(self):
        return self.shadow

    def load_state_dict(self, s, num_updates: int | None = None):
        for k in self.shadow:
            self.shadow[k].copy_(s[k])
        if num_updates is not None:
            self.num_updates = num_updates


def make_optimizer(model: torch.nn.Module, t, device) -> torch.optim.Adam:
    """Adam of a ``train`` section (fused on CUDA when ``t.fused_adam``)."""
    fused = {"fused": True} if t.fused_adam and torch.device(device).type == "cuda" else {}
    return torch.optim.Adam(model.parameters(), lr=t.lr, betas=(t.beta1, t.beta2), eps=t.eps,
                            weight_decay=t.weight_decay, **fused)


def make_autocast(t, device):
    """The autocast context of a ``train`` section (bf16 or disabled)."""
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=t.amp == "bf16")


def learning_rate(t, step: int) -> float:
    """The learning rate of step ``step`` (0-based): a linear warm-up over ``t.warmup`` steps, then ``t.lr``."""
    return t.lr * min(1.0, (step + 1) / t.warmup) if t.warmup > 0 else t.lr


# ---------------------------------------------------------------------------- a run's state and its step
@dataclass
class TrainState:
    """What the loop updates: the network (and what the loss calls), EMA, optimiser, data, noise."""

    model: torch.nn.Module
    net: torch.nn.Module
    ema: EMA
    opt: torch.optim.Optimizer
    source: BatchSource
    loss_fn: object
    g_noise: torch.Generator
    ctx: RunContext  # rank, world and device of this process
    init_record: dict | None = None  # where the initial weights came from (--init-from), for run.json

    @property
    def device(self) -> torch.device:
        return self.ctx.device


def build_state(cfg: Config, arm: str, ctx: RunContext, init=None) -> TrainState:
    """Fresh model, EMA, optimiser, data source and noise stream of a run (before any resume).
    The one place where the weights are initialised: seeded, then ``init(model)`` (a fine-tune's
    pretrained weights, lib.train; it returns the record of where they came from)."""
    t, device = cfg.train, ctx.device
    torch.manual_seed(t.seed)  # same initial weights on every rank and in every arm
    model = build_model(cfg.model).to(device)
    init_record = init(model) if init is not None else None  # before the EMA copies the weights, and before resume
    if ctx.world > 1:  # the global RNG now only drives dropout: give each rank its own masks
        torch.manual_seed(t.seed + 1_000_003 * ctx.rank)
    if t.channels_last and cfg.model.kind == "unet":
        model = model.to(memory_format=torch.channels_last)
    ema = EMA(model, t.ema_decay, t.ema_rampup)
    source = BatchSource(cfg.data, device, torch.Generator().manual_seed(t.seed + 1), ctx.rank, ctx.world, t.batch_size)
    g_noise = torch.Generator(device=device).manual_seed(t.seed * 7919 + 2 + ctx.rank)
    return TrainState(model, model, ema, make_optimizer(model, t, device), source,
                      make_loss(cfg, arm, schedule_of(cfg)), g_noise, ctx, init_record)


def step(st: TrainState, t, i: int, autocast, *, check_finite: bool):
    """Step ``i`` (0-based) of a run: the next batch, the warmed-up learning rate, :func:`train_step`.
    Returns ``(loss, parts, grad_norm, lr)``."""
    x0 = st.source.next(t.batch_size)
    if t.channels_last and not st.source.toy:
        x0 = x0.contiguous(memory_format=torch.channels_last)
    lr = learning_rate(t, i)
    for grp in st.opt.param_groups:
        grp["lr"] = lr
    loss, parts, gn = train_step(st.model, st.opt, st.ema, st.loss_fn, x0, st.g_noise, net=st.net,
                                 grad_clip=t.grad_clip, autocast=autocast, check_finite=check_finite)
    return loss, parts, gn, lr


# ---------------------------------------------------------------------------- what makes a run the same
def training_code(model_kind: str, arm: str) -> dict:
    """The fingerprint of the recipe a run of ``arm`` with a ``model_kind`` network executes: every
    function and class reachable from :func:`build_state` and :func:`step` (model, schedule, loss, data
    pipeline, optimiser, EMA), as normalised syntax trees (lib.infra.fingerprint), minus the dispatch
    branches this run does not take (the other network, the CDM loss for the paper's arms)."""
    from lib.mlp import build_mlp
    from lib.unet import build_unet

    models = {"unet": build_unet, "mlp": build_mlp}
    not_taken = [f for k, f in models.items() if k != model_kind]
    if arm != "cdm":
        not_taken.append(cdm.make_cdm_loss)
    if arm != "ip":
        not_taken.append(ip_loss)
    return recipe_fingerprint([build_state, step], exclude=not_taken)
