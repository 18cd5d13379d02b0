"""The configuration schema (frozen dataclasses), its parsing (dotted-key overrides, JSON) and validation.

    cfg = get_config("cpu", ["train.steps=2000", "loss.tau=0.98"])

Override values are Python literals (``ast.literal_eval``: ``3``, ``0.5``, ``(1, 2)``, ``1,2``, ``'cpu'``;
``true``/``false`` as well; a bare word is a string), checked against the field's annotated type.
:func:`validate` checks the type of every field of every section, then the value rules (the experiment
section's in lib.infra.experiment_config, the model/data fit in lib.infra.dataset_table). Profiles
(``ci``, ``cpu``, ``gpu``, ``paper``; docs/profiles.md) are settings over the schema's defaults, side by
side in lib.infra.profiles. Unknown profiles, unknown keys, wrong types and impossible values fail at
once with a message that lists what is valid.
"""
from __future__ import annotations

import ast
import dataclasses
import functools
import json
import math
from dataclasses import dataclass, field, fields, replace
from typing import Any, get_args, get_origin, get_type_hints

from lib.infra import profiles as _profiles
from lib.infra.config_error import ConfigError, need
from lib.infra.dataset_table import IMAGE_DATASETS, TOY_DATASETS, check_model_fits_data
from lib.infra.experiment_config import RENAMED, ExperimentConfig, validate_experiment

__all__ = ["ConfigError", "Config", "ModelConfig", "DiffusionConfig", "LossConfig", "DataConfig", "TrainConfig",
           "SampleConfig", "EvalConfig", "ToyConfig", "ExperimentConfig", "DDIM_GRIDS", "TOY_DATASETS",
           "IMAGE_DATASETS", "PROFILES", "get_config", "with_overrides", "validate", "toy_overrides", "toy_config",
           "from_dict", "load_json"]

# The DDIM code's integer timestep grids, the values of sample.grid (lib.schedule.Schedule.timesteps
# computes them; lib.transfer adds EDM's grids for the samplers that run on σ).
DDIM_GRIDS = ("uniform", "quad")


@dataclass(frozen=True)
class ModelConfig:
    """The ε-network. ``kind='unet'``: the DDPM UNet of the DDIM code; ``'mlp'``: the 2-D toy net."""

    kind: str = "unet"
    in_channels: int = 3
    out_ch: int = 3
    resolution: int = 32
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.1
    resamp_with_conv: bool = True
    # GroupNorm groups of every layer (diffusers' UNet2DModel holds one count); 0: lib.unet.num_groups's
    # width rule (4 and 8 groups at widths 16/32 of ci/cpu, DDPM's 32 from width 128 on).
    norm_groups: int = 0
    hidden: int = 256  # mlp only
    depth: int = 3  # mlp only


@dataclass(frozen=True)
class DiffusionConfig:
    """The linear-β schedule of DDPM (docs/method.md §1)."""

    T: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02


@dataclass(frozen=True)
class LossConfig:
    """S²-DM loss L = τL_0 + (1-τ)L_skip (the baseline arm uses τ = 1 through the same code)."""

    skip: int = 9
    tau: float = 0.99
    same_noise: bool = False  # the literal-notation ablation: ε′ = ε (never the default)
    cdm_lambda: float = 10.0  # Consistent Diffusion Models weight (arm 'cdm')
    cdm_steps: int = 5  # Euler–Maruyama steps of each no-grad CDM chain
    cdm_dsigma: float = 0.05  # σ′ = max(σ - U[0, dsigma], σ_min)
    gamma: float = 0.1  # DDPM-IP's input perturbation ε + γξ (arm 'ip'; 0.1 is the published default)


@dataclass(frozen=True)
class DataConfig:
    """Training data; images are scaled to [-1, 1]."""

    dataset: str = "cifar10"  # toy2d names, 'digits', 'mnist', 'cifar10', 'celeba'
    root: str = "data"
    image_size: int = 32
    random_flip: bool = True
    n_train: int = 0  # 0: all
    download: bool = False  # never download unless asked


@dataclass(frozen=True)
class TrainConfig:
    """Adam, gradient clipping and EMA as in the DDIM code (docs/method.md §1)."""

    steps: int = 800_000
    batch_size: int = 128
    lr: float = 2e-4
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup: int = 0
    grad_clip: float = 1.0
    ema_decay: float = 0.9999
    # EDM's ema_rampup_ratio: the EMA half-life is at most ema_rampup x the steps (images) seen so
    # far, so a short run does not keep its random initial weights in the average; 0 = plain EMA.
    ema_rampup: float = 0.0
    ckpt_every: int = 5000
    keep_ckpts: int = 3
    log_every: int = 100
    seed: int = 0
    amp: str = "none"  # 'none' | 'bf16'
    channels_last: bool = False
    compile: bool = False
    fused_adam: bool = False
    device: str = "auto"  # 'auto' | 'cpu' | 'cuda'
    # Processes per training run: > 1 launches each run through torchrun (DDP, the global batch split over
    # them); 0: one per visible CUDA device (profile paper). 1: a plain process.
    nproc: int = 1


@dataclass(frozen=True)
class SampleConfig:
    """The sampler sweep of notebooks 04–06."""

    methods: tuple[str, ...] = ("ddim", "spndm", "pndm", "deis")
    steps: tuple[int, ...] = (10, 20, 50, 100)
    grid: str = "uniform"
    eta: float = 0.0
    n_samples: int = 50_000
    batch_size: int = 500
    seed: int = 1234


@dataclass(frozen=True)
class EvalConfig:
    """The metric: 'classifier' (Fréchet distance on a small classifier's features, offline) or
    'inception' (clean-fid Inception FID)."""

    metric: str = "inception"
    fid_mode: str = "legacy_tensorflow"
    n_boot: int = 200
    ci_level: float = 0.95
    classifier_steps: int = 2000
    classifier_width: int = 32
    # KID is computed on the first kid_samples samples of a cell (0: all): its [n, n] kernel matrix is
    # 0.8 GB at 10k samples and 20 GB at 50k. KID is unbiased at every n, so fewer samples only widen its interval.
    kid_samples: int = 10_000


@dataclass(frozen=True)
class ToyConfig:
    """The 2-D experiment: an MLP ε-model on a distribution with a known density."""

    dataset: str = "ring8"
    n_seeds: int = 5
    steps: int = 4000
    batch_size: int = 1024
    lr: float = 1e-3
    hidden: int = 128
    depth: int = 3
    n_samples: int = 20_000
    sample_steps: tuple[int, ...] = (5, 10, 20, 50)


@dataclass(frozen=True)
class Config:
    profile: str = "paper"
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    toy: ToyConfig = field(default_factory=ToyConfig)
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


# ---------------------------------------------------------------------------- profiles
def _profile(name: str) -> Config:
    """The named profile: the schema's defaults (the paper's recipe) with the profile's settings
    (lib.infra.profiles, every number side by side)."""
    return with_overrides(Config(profile=name), _profiles.PROFILE_SETTINGS[name])


PROFILES = {name: functools.partial(_profile, name) for name in _profiles.PROFILE_SETTINGS}


# ---------------------------------------------------------------------------- parsing and types
def _sections() -> dict:
    return {f.name: f for f in fields(Config) if f.name != "profile"}


def _literal(text: str, typ) -> Any:
    """A command-line value: a Python literal, ``true``/``false``, or else the bare text (a string)."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if get_origin(typ) is tuple:  # ddim,pndm: a tuple of bare words (each item parsed on its own)
            return tuple(_literal(v.strip(), get_args(typ)[0]) for v in text.strip("()[]").split(",") if v.strip())
        return text


def _typed(value: Any, typ, key: str) -> Any:
    """``value`` as the field type ``typ`` (bool, int, float, str or tuple[T, ...]), or ConfigError."""
    def bad(what):
        return ConfigError(f"{key}: expected {what}, got {value!r}")

    if get_origin(typ) is tuple:
        items = value if isinstance(value, (tuple, list)) else (value,)
        return tuple(_typed(v, get_args(typ)[0], key) for v in items)
    if typ is bool:
        if not isinstance(value, bool):
            raise bad("a boolean (true/false)")
        return value
    if typ is int:  # 2000.0 and 1e3 are integers; 2.5, nan, inf and True are not
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or value != int(value):
            raise bad("an integer")
        return int(value)
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise bad("a finite number")
        return float(value)
    if typ is str and not isinstance(value, str):
        raise bad("a string")
    return value


def _set(cfg: Config, key: str, value: Any) -> Config:
    sections = _sections()
    parts = key.split(".")
    if len(parts) != 2 or parts[0] not in sections:
        raise ConfigError(f"unknown config key {key!r}; keys look like section.name with section one of: "
                          f"{', '.join(sections)}")
    sec_name, name = parts
    sec = getattr(cfg, sec_name)
    hints = get_type_hints(type(sec))
    if sec_name == "experiment" and name in RENAMED:
        raise ConfigError(f"config key {key!r} was renamed experiment.{RENAMED[name]}; use that name")
    if name not in hints:
        raise ConfigError(f"unknown config key {key!r}; valid keys in [{sec_name}]: {', '.join(hints)}")
    if isinstance(value, str) and hints[name] is not str:
        value = _literal(value, hints[name])
    return replace(cfg, **{sec_name: replace(sec, **{name: _typed(value, hints[name], key)})})


def with_overrides(cfg: Config, overrides) -> Config:
    """Apply ``["section.key=value", ...]`` or ``{"section.key": value}`` overrides, then :func:`validate`."""
    if not overrides:
        return cfg
    for key, value in (overrides.items() if isinstance(overrides, dict) else map(_split, overrides)):
        cfg = _set(cfg, key, value)
    return validate(cfg)


def _split(o: str) -> tuple[str, str]:
    if "=" not in o:
        raise ConfigError(f"override {o!r} must look like section.key=value")
    k, v = o.split("=", 1)
    return k.strip(), v.strip()


# ---------------------------------------------------------------------------- the validator
def validate(cfg: Config) -> Config:
    """The one validator: every field's type (every section, generically), then the value rules and the
    model/data consistency. Returns ``cfg``; raises ConfigError naming the key and what is valid."""
    for name in _sections():
        sec = getattr(cfg, name)
        for f, typ in get_type_hints(type(sec)).items():
            _typed(getattr(sec, f), typ, f"{name}.{f}")

    d, lo, t, s, m, e = cfg.diffusion, cfg.loss, cfg.train, cfg.sample, cfg.model, cfg.eval
    need(d.T >= 2, f"diffusion.T must be >= 2, got {d.T}")
    need(0 < d.beta_start <= d.beta_end < 1, "diffusion: need 0 < beta_start <= beta_end < 1")
    need(1 <= lo.skip < d.T, f"loss.skip must satisfy 1 <= skip < T={d.T}, got {lo.skip}")
    need(0.0 <= lo.tau <= 1.0, f"loss.tau must lie in [0, 1], got {lo.tau}")
    need(lo.cdm_lambda >= 0 and lo.cdm_steps >= 1 and lo.cdm_dsigma > 0, "loss.cdm_*: need lambda >= 0, steps >= 1, dsigma > 0")
    need(math.isfinite(lo.gamma) and lo.gamma >= 0, f"loss.gamma (DDPM-IP's perturbation) must be a finite number >= 0, got {lo.gamma}")
    for k in ("steps", "batch_size", "ckpt_every", "keep_ckpts", "log_every"):
        need(getattr(t, k) >= 1, f"train.{k} must be a positive integer, got {getattr(t, k)}")
    need(t.lr > 0 and t.warmup >= 0, f"train.lr must be > 0 and train.warmup >= 0, got {t.lr} and {t.warmup}")
    need(0.0 <= t.ema_decay < 1.0, f"train.ema_decay must lie in [0, 1), got {t.ema_decay}")
    need(t.ema_rampup >= 0, f"train.ema_rampup must be >= 0 (0: plain EMA; EDM uses 0.05), got {t.ema_rampup}")
    need(t.grad_clip >= 0, f"train.grad_clip must be >= 0 (0 disables), got {t.grad_clip}")
    need(t.amp in ("none", "bf16"), f"train.amp must be 'none' or 'bf16', got {t.amp!r}")
    need(t.device in ("auto", "cpu", "cuda"), f"train.device must be 'auto', 'cpu' or 'cuda', got {t.device!r}")
    need(t.nproc >= 0, f"train.nproc must be >= 0 (0: one process per CUDA device; 1: no torchrun), got {t.nproc}")
    need(len(s.steps) > 0 and all(1 <= k <= d.T for k in s.steps),
         f"sample.steps must be positive integers <= T={d.T}, got {s.steps}")
    need(s.grid in DDIM_GRIDS, f"sample.grid must be {' or '.join(map(repr, DDIM_GRIDS))}, got {s.grid!r}")
    need(s.n_samples >= 2 and s.batch_size >= 1, "sample.n_samples must be >= 2 and sample.batch_size >= 1")
    need(s.eta >= 0, f"sample.eta must be >= 0, got {s.eta}")
    need(m.kind in ("unet", "mlp"), f"model.kind must be 'unet' or 'mlp', got {m.kind!r}")
    widths = sorted({m.ch * k for k in m.ch_mult})
    need(m.norm_groups == 0 or (m.norm_groups > 0 and all(w % m.norm_groups == 0 for w in widths)),
         f"model.norm_groups={m.norm_groups} must divide every width {widths} (or be 0: the width rule of lib.unet)")
    need(m.ch >= 1 and len(m.ch_mult) >= 1 and min(m.ch_mult) >= 1 and m.num_res_blocks >= 1,
         "model: need ch >= 1, ch_mult non-empty with entries >= 1, num_res_blocks >= 1")
    need(0.0 <= m.dropout < 1.0, f"model.dropout must lie in [0, 1), got {m.dropout}")
    need(e.metric in ("classifier", "inception"), f"eval.metric must be 'classifier' or 'inception', got {e.metric!r}")
    need(e.fid_mode in ("legacy_tensorflow", "clean"), f"eval.fid_mode must be 'legacy_tensorflow' or 'clean', got {e.fid_mode!r}")
    need(0 < e.ci_level < 1, f"eval.ci_level must lie in (0, 1), got {e.ci_level}")
    need(e.kid_samples == 0 or e.kid_samples >= 2, f"eval.kid_samples must be 0 (all) or >= 2, got {e.kid_samples}")
    need(cfg.toy.n_seeds >= 1 and cfg.toy.steps >= 1, "toy.n_seeds and toy.steps must be >= 1")
    check_model_fits_data(cfg)  # before anything is built or loaded
    validate_experiment(cfg.experiment, d.T)
    return cfg


# ---------------------------------------------------------------------------- the toy experiment
def toy_overrides(cfg: Config) -> dict:
    """A profile's 2-D toy experiment as an override set: the MLP ε-model on ``toy.dataset`` with the
    ``toy.*`` settings. Diffusion, loss and seed stay those of ``cfg`` (the toy and image arms share the
    method); every model field is set, so no image-model value leaks into the MLP's config."""
    t = cfg.toy
    mlp = ModelConfig(kind="mlp", in_channels=2, out_ch=2, hidden=t.hidden, depth=t.depth, dropout=0.0)
    return {**{f"model.{k}": v for k, v in dataclasses.asdict(mlp).items()},
            "data.dataset": t.dataset, "data.random_flip": False,
            "train.steps": t.steps, "train.batch_size": t.batch_size, "train.lr": t.lr, "train.warmup": 0,
            "train.ema_decay": min(cfg.train.ema_decay, 0.995), "train.ckpt_every": max(1, t.steps // 2),
            "train.log_every": max(1, t.steps // 50), "train.amp": "none", "train.channels_last": False,
            "train.compile": False, "train.nproc": 1,
            "sample.n_samples": t.n_samples, "sample.batch_size": t.n_samples, "sample.steps": t.sample_steps}


def toy_config(cfg: Config) -> Config:
    """``cfg`` with :func:`toy_overrides` applied."""
    return with_overrides(cfg, toy_overrides(cfg))


# ---------------------------------------------------------------------------- entry points
def get_config(profile: str = "cpu", overrides=None) -> Config:
    """The named profile with ``overrides`` applied (see :func:`with_overrides`)."""
    if not isinstance(profile, str) or profile not in PROFILES:  # a notebook parameter may be of any type
        raise ConfigError(f"unknown profile {profile!r}; valid profiles: {', '.join(PROFILES)}")
    return with_overrides(validate(PROFILES[profile]()), overrides)


def from_dict(d: dict) -> Config:
    """Rebuild a Config from :meth:`Config.to_dict` output (e.g. a run's config.json)."""
    sections = _sections()
    unknown = set(d) - set(sections) - {"profile"} if isinstance(d, dict) else {"(not a mapping)"}
    if unknown:
        raise ConfigError(f"unknown config sections {sorted(unknown)}; valid: {', '.join(sections)}")
    base = Config(profile=d.get("profile", "paper"))
    bad = sorted(s for s in sections if s in d and not isinstance(d[s], dict))
    if bad:
        raise ConfigError(f"config sections {bad} are not mappings of key to value")
    saved = {s: dict(d[s]) for s in sections if s in d}
    experiment = saved.get("experiment", {})
    for old, new in RENAMED.items():  # a config saved before a key was renamed loads under its new name
        if old in experiment:
            experiment.setdefault(new, experiment.pop(old))
    return validate(with_overrides(base, {f"{s}.{k}": v for s, sec in saved.items() for k, v in sec.items()}))


def load_json(path) -> Config:
    """A Config from a JSON file; invalid JSON or values are a ConfigError naming the file."""
    try:
        with open(path) as f:
            d = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is not valid JSON ({e}); restore it, or delete the run directory to "
                          f"train it again") from None
    try:
        return from_dict(d)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
