"""Frozen configuration dataclasses, named profiles and dotted-key overrides.

    cfg = get_config("cpu", ["train.steps=2000", "loss.tau=0.98"])

Profiles (README.md): ``ci`` (the test suite, minutes on 2 cores), ``cpu`` (``make reproduce``
without a GPU: MNIST-5k and 2-D toy data, ~30 min on 2 cores), ``gpu`` (one GPU: CIFAR-10) and
``paper`` (the paper's model and optimiser, long training, 50k-sample FID).
Unknown profiles, unknown keys, wrong types and impossible values fail at once with a message
that lists what is valid.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields, replace
from typing import Any, get_args, get_origin, get_type_hints


class ConfigError(ValueError):
    """A configuration that cannot be valid: the message says what is wrong and what is allowed."""


@dataclass(frozen=True)
class ModelConfig:
    """The ε-network. ``kind='unet'``: the DDPM UNet of the DDIM code; ``'mlp'``: the 2-D toy net."""

    kind: str = "unet"
    in_channels: int = 3
    out_ch: int = 3
    resolution: int = 32
    ch: int = 128
    ch_mult: tuple = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: tuple = (16,)
    dropout: float = 0.1
    resamp_with_conv: bool = True
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
    ckpt_every: int = 5000
    keep_ckpts: int = 3
    log_every: int = 100
    seed: int = 0
    amp: str = "none"  # 'none' | 'bf16'
    channels_last: bool = False
    compile: bool = False
    fused_adam: bool = False
    device: str = "auto"  # 'auto' | 'cpu' | 'cuda'


@dataclass(frozen=True)
class SampleConfig:
    """The sampler sweep of notebooks 04–06."""

    methods: tuple = ("ddim", "spndm", "pndm", "deis")
    steps: tuple = (10, 20, 50, 100)
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
    sample_steps: tuple = (5, 10, 20, 50)


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
    experiment: "ExperimentConfig" = field(default_factory=lambda: ExperimentConfig())

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


# ---------------------------------------------------------------------------- profiles
def _paper() -> Config:
    # The DDPM CIFAR-10 model (35,746,307 parameters) and the DDIM code's optimiser, in float32 as
    # the paper; channels_last and fused Adam change speed, not the arithmetic. device='cuda' fails
    # fast instead of silently training on a CPU (override with --set train.device=cpu).
    c = Config(profile="paper")
    return replace(c, train=replace(c.train, channels_last=True, fused_adam=True, device="cuda"))


def _gpu() -> Config:
    c = _paper()
    return replace(
        c,
        profile="gpu",
        train=replace(c.train, steps=40_000, ckpt_every=2000, amp="bf16", channels_last=True, fused_adam=True),
        sample=replace(c.sample, n_samples=10_000, batch_size=1000, steps=(10, 20, 50, 100, 1000)),
        experiment=replace(c.experiment, n_seeds=3),
    )


def _cpu() -> Config:
    # MNIST-5k at 16x16 with a small UNet (267k parameters), and the 2-D toy with 5 seeds per arm:
    # ~30 min on 2 cores (measured: README). The sweep's 4 samplers x 4 step counts x 2 arms cost
    # ~1500 network evaluations per sample, hence 500 samples per cell.
    return Config(
        profile="cpu",
        model=ModelConfig(in_channels=1, out_ch=1, resolution=16, ch=16, ch_mult=(1, 2, 2), num_res_blocks=1,
                          attn_resolutions=(), dropout=0.0),
        loss=LossConfig(),
        data=DataConfig(dataset="mnist", image_size=16, random_flip=False),
        train=TrainConfig(steps=3000, batch_size=64, lr=1e-3, warmup=100, ema_decay=0.999, ckpt_every=500,
                          log_every=50),
        sample=SampleConfig(n_samples=500, batch_size=250, steps=(10, 20, 50, 100)),
        eval=EvalConfig(metric="classifier", n_boot=200, classifier_steps=1000, classifier_width=16),
        toy=ToyConfig(n_seeds=5, steps=2000, batch_size=512, n_samples=5000),
        experiment=ExperimentConfig(n_seeds=3, **_RELATED_CPU),
    )


def _ci() -> Config:
    # Tiny everything: the notebooks must run end to end in a few minutes on 2 cores.
    return Config(
        profile="ci",
        model=ModelConfig(in_channels=1, out_ch=1, resolution=8, ch=16, ch_mult=(1, 2), num_res_blocks=1,
                          attn_resolutions=(4,), dropout=0.0),
        data=DataConfig(dataset="digits", image_size=8, random_flip=False),
        train=TrainConfig(steps=40, batch_size=32, lr=1e-3, ema_decay=0.9, ckpt_every=20, log_every=10),
        sample=SampleConfig(n_samples=64, batch_size=64, steps=(5, 10)),
        eval=EvalConfig(metric="classifier", n_boot=20, classifier_steps=100, classifier_width=8),
        toy=ToyConfig(n_seeds=2, steps=100, batch_size=256, hidden=32, n_samples=500, sample_steps=(5, 10)),
        experiment=ExperimentConfig(n_seeds=2, workers=1, **_RELATED_CI),
    )


PROFILES = {"ci": _ci, "cpu": _cpu, "gpu": _gpu, "paper": _paper}


# ---------------------------------------------------------------------------- overrides
def _coerce(value: Any, typ: Any, key: str) -> Any:
    """Turn a string (from the command line) or JSON value into ``typ``, or raise ConfigError."""
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{key}: expected a boolean (true/false), got {value!r}")
    if typ is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
        if f != int(f):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return int(f)
    if typ is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if typ is str:
        return str(value)
    if typ is tuple or get_origin(typ) is tuple:
        if isinstance(value, str):
            value = value.strip().strip("()[]")
            items = [v.strip() for v in value.split(",") if v.strip()]
        else:
            items = list(value)
        out = []
        for v in items:  # tuples hold ints or strings; numbers become ints where exact
            if isinstance(v, str):
                try:
                    v = int(v)
                except ValueError:
                    try:
                        v = float(v)
                    except ValueError:
                        pass
            out.append(v)
        return tuple(out)
    return value


def _sections() -> dict:
    return {f.name: f for f in fields(Config) if f.name != "profile"}


def with_overrides(cfg: Config, overrides) -> Config:
    """Apply ``["section.key=value", ...]`` or ``{"section.key": value}`` overrides."""
    if not overrides:
        return cfg
    items = overrides.items() if isinstance(overrides, dict) else [_split(o) for o in overrides]
    sections = _sections()
    for key, value in items:
        parts = key.split(".")
        if len(parts) != 2 or parts[0] not in sections:
            raise ConfigError(f"unknown config key {key!r}; keys look like section.name with section one of: "
                              f"{', '.join(sections)}")
        sec_name, name = parts
        sec = getattr(cfg, sec_name)
        hints = get_type_hints(type(sec))
        if name not in hints:
            raise ConfigError(f"unknown config key {key!r}; valid keys in [{sec_name}]: {', '.join(hints)}")
        sec = replace(sec, **{name: _coerce(value, hints[name], key)})
        cfg = replace(cfg, **{sec_name: sec})
    validate(cfg)
    return cfg


def _split(o: str) -> tuple[str, str]:
    if "=" not in o:
        raise ConfigError(f"override {o!r} must look like section.key=value")
    k, v = o.split("=", 1)
    return k.strip(), v.strip()


def validate(cfg: Config) -> Config:
    """Reject impossible values with a message naming the key and the valid range."""
    def need(ok, msg):
        if not ok:
            raise ConfigError(msg)

    d, l, t, s, m, e = cfg.diffusion, cfg.loss, cfg.train, cfg.sample, cfg.model, cfg.eval
    need(d.T >= 2, f"diffusion.T must be >= 2, got {d.T}")
    need(0 < d.beta_start <= d.beta_end < 1, "diffusion: need 0 < beta_start <= beta_end < 1")
    need(1 <= l.skip < d.T, f"loss.skip must satisfy 1 <= skip < T={d.T}, got {l.skip}")
    need(0.0 <= l.tau <= 1.0, f"loss.tau must lie in [0, 1], got {l.tau}")
    need(l.cdm_lambda >= 0 and l.cdm_steps >= 1 and l.cdm_dsigma > 0, "loss.cdm_*: need lambda >= 0, steps >= 1, dsigma > 0")
    for k in ("steps", "batch_size", "ckpt_every", "keep_ckpts", "log_every"):
        need(getattr(t, k) >= 1, f"train.{k} must be a positive integer, got {getattr(t, k)}")
    need(t.lr > 0, f"train.lr must be > 0, got {t.lr}")
    need(0.0 <= t.ema_decay < 1.0, f"train.ema_decay must lie in [0, 1), got {t.ema_decay}")
    need(t.grad_clip >= 0, f"train.grad_clip must be >= 0 (0 disables), got {t.grad_clip}")
    need(t.amp in ("none", "bf16"), f"train.amp must be 'none' or 'bf16', got {t.amp!r}")
    need(t.device in ("auto", "cpu", "cuda"), f"train.device must be 'auto', 'cpu' or 'cuda', got {t.device!r}")
    need(len(s.steps) > 0 and all(isinstance(k, int) and 1 <= k <= d.T for k in s.steps),
         f"sample.steps must be positive integers <= T={d.T}, got {s.steps}")
    need(s.grid in ("uniform", "quad"), f"sample.grid must be 'uniform' or 'quad', got {s.grid!r}")
    need(s.n_samples >= 2 and s.batch_size >= 1, "sample.n_samples must be >= 2 and sample.batch_size >= 1")
    need(s.eta >= 0, f"sample.eta must be >= 0, got {s.eta}")
    need(m.kind in ("unet", "mlp"), f"model.kind must be 'unet' or 'mlp', got {m.kind!r}")
    need(m.ch >= 1 and len(m.ch_mult) >= 1 and m.num_res_blocks >= 1, "model: need ch >= 1, ch_mult non-empty, num_res_blocks >= 1")
    need(0.0 <= m.dropout < 1.0, f"model.dropout must lie in [0, 1), got {m.dropout}")
    need(e.metric in ("classifier", "inception"), f"eval.metric must be 'classifier' or 'inception', got {e.metric!r}")
    need(e.fid_mode in ("legacy_tensorflow", "clean"), f"eval.fid_mode must be 'legacy_tensorflow' or 'clean', got {e.fid_mode!r}")
    need(0 < e.ci_level < 1, f"eval.ci_level must lie in (0, 1), got {e.ci_level}")
    need(cfg.toy.n_seeds >= 1 and cfg.toy.steps >= 1, "toy.n_seeds and toy.steps must be >= 1")
    validate_experiment(cfg.experiment, d.T)
    return cfg


def toy_config(cfg: Config) -> Config:
    """The 2-D toy experiment of a profile: the MLP ε-model on ``toy.dataset`` with ``toy.*`` settings.

    Diffusion, loss and seed stay those of ``cfg`` so that the toy and image arms share the method."""
    t = cfg.toy
    return validate(replace(
        cfg,
        model=ModelConfig(kind="mlp", in_channels=2, out_ch=2, hidden=t.hidden, depth=t.depth, dropout=0.0),
        data=replace(cfg.data, dataset=t.dataset, random_flip=False),
        train=replace(cfg.train, steps=t.steps, batch_size=t.batch_size, lr=t.lr, warmup=0,
                      ema_decay=min(cfg.train.ema_decay, 0.995), ckpt_every=max(1, t.steps // 2),
                      log_every=max(1, t.steps // 50), amp="none", channels_last=False, compile=False),
        sample=replace(cfg.sample, n_samples=t.n_samples, batch_size=t.n_samples, steps=t.sample_steps),
    ))


def get_config(profile: str = "cpu", overrides=None) -> Config:
    """The named profile with ``overrides`` applied (see :func:`with_overrides`)."""
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}; valid profiles: {', '.join(PROFILES)}")
    return with_overrides(validate(PROFILES[profile]()), overrides)


def from_dict(d: dict) -> Config:
    """Rebuild a Config from :meth:`Config.to_dict` output (e.g. a run's config.json)."""
    sections = _sections()
    unknown = set(d) - set(sections) - {"profile"}
    if unknown:
        raise ConfigError(f"unknown config sections {sorted(unknown)}; valid: {', '.join(sections)}")
    flat = {f"{s}.{k}": v for s in sections if s in d for k, v in d[s].items()}
    return with_overrides(Config(profile=d.get("profile", "paper")), flat)


def load_json(path) -> Config:
    with open(path) as f:
        return from_dict(json.load(f))


# ---------------------------------------------------------------------------- the experiment design
@dataclass(frozen=True)
class ExperimentConfig:
    """How many training seeds the image comparison rests on, how they are trained, and the plan of
    notebook 06 (the neighbouring methods). Image seed s of every arm is ``train.seed = s``: the arms
    of one seed share initial weights, data order and noise streams (a paired design).

    0 in a ``related_*``/``cdm_*`` size means "the profile's own value" (``sample.n_samples``,
    ``toy.n_samples``, ``loss.cdm_steps``); ``cdm_finetune = 0`` trains the CDM arm from scratch."""

    n_seeds: int = 1  # image training seeds per arm (the paper trains one)
    workers: int = 0  # parallel single-threaded training processes; 0: os.cpu_count(); 1: in this process
    related_steps: tuple = (10, 20, 50, 100)  # step counts of notebook 06
    related_n_samples: int = 0  # samples per image cell in 06
    related_toy_samples: int = 0  # samples per toy cell in 06 (its MMD costs ~1 s per cell at 5000)
    cdm_finetune: int = 0  # > 0: the CDM arm (and its control) fine-tune the baseline for this many steps
    cdm_toy_finetune: int = 0  # the same for the toy
    cdm_chain_steps: int = 0  # Euler–Maruyama steps per CDM chain during the fine-tune
    cdm_ft_ema_decay: float = 0.99  # EMA decay during the fine-tune, so the EMA weights reflect it
    rho_top: tuple = (1.0, 0.95, 0.9)  # Skip-Tuning grid (outer skips)
    rho_bottom: tuple = (1.0, 0.9, 0.8, 0.7)  # Skip-Tuning grid (inner skips)
    es_b: tuple = (1.002, 1.004, 1.006, 1.01, 1.02)  # eps scaling: constant λ grid
    es_k: tuple = (-0.01, 0.01, 0.02)  # eps scaling: slopes around the best constant


# Notebook 06 at the small profiles: cpu chosen to fit a few minutes on 2 cores per seed.
_RELATED_CI = dict(related_steps=(5, 10), cdm_finetune=6, cdm_toy_finetune=20, cdm_chain_steps=2,
                   rho_top=(1.0, 0.9), rho_bottom=(1.0, 0.8), es_b=(1.005, 1.02), es_k=(0.02,))
_RELATED_CPU = dict(related_steps=(10, 20), related_n_samples=250, related_toy_samples=1000, cdm_finetune=100,
                    cdm_toy_finetune=100, cdm_chain_steps=2, rho_top=(1.0, 0.98), rho_bottom=(1.0, 0.95, 0.9, 0.8),
                    es_b=(1.002, 1.005, 1.01, 1.02), es_k=(-0.02, 0.02))


def validate_experiment(x: ExperimentConfig, T: int) -> ExperimentConfig:
    """Reject an impossible experiment design, naming the key."""
    if x.n_seeds < 1 or x.workers < 0:
        raise ConfigError(f"experiment.n_seeds must be >= 1 and experiment.workers >= 0, got {x.n_seeds}, {x.workers}")
    if not x.related_steps or not all(isinstance(k, int) and 1 <= k <= T for k in x.related_steps):
        raise ConfigError(f"experiment.related_steps must be positive integers <= T={T}, got {x.related_steps}")
    for k in ("related_n_samples", "related_toy_samples", "cdm_finetune", "cdm_toy_finetune", "cdm_chain_steps"):
        if getattr(x, k) < 0:
            raise ConfigError(f"experiment.{k} must be >= 0 (0: the profile's value), got {getattr(x, k)}")
    if x.related_n_samples == 1 or x.related_toy_samples == 1:
        raise ConfigError("experiment.related_n_samples / related_toy_samples must be 0 or >= 2")
    if not 0.0 <= x.cdm_ft_ema_decay < 1.0:
        raise ConfigError(f"experiment.cdm_ft_ema_decay must lie in [0, 1), got {x.cdm_ft_ema_decay}")
    for k in ("rho_top", "rho_bottom", "es_b"):
        if not getattr(x, k) or not all(isinstance(v, (int, float)) and v > 0 for v in getattr(x, k)):
            raise ConfigError(f"experiment.{k} must be a non-empty tuple of positive numbers, got {getattr(x, k)}")
    return x
