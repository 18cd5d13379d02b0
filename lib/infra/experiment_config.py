"""The experiment section of the config: how many training seeds the image comparison rests on, the
plan of notebook 06 (the neighbouring methods) and of the dose–response test, and its validation."""
from __future__ import annotations

from dataclasses import dataclass

from lib.infra.config_error import need


@dataclass(frozen=True)
class ExperimentConfig:
    """The experiment's design, in groups named by their prefix:

    * the comparison (no prefix): training seeds, which of them run the full sweep, the declared family,
      worker processes. Image seed s of every arm is ``train.seed = s``: the arms of one seed share
      initial weights, data order and noise streams (a paired design);
    * ``related_*``: notebook 06's neighbouring methods (step counts, seeds, samples, the Skip-Tuning grid
      ρ and the ε-scaling grid b, k, each in its paper's symbols); ``cdm_*``: the CDM arm's fine-tune;
    * ``dose_*``: the dose–response test of the shrinkage explanation (S²-DM and DDPM-IP doses);
    * ``control_*``: the constant-ε-scaling control on the baseline;
    * ``rehearsal``: the GPU-route rehearsal's manifest.

    0 in a ``related_*``/``cdm_*`` size means "the profile's own value" (``sample.n_samples``,
    ``toy.n_samples``, ``loss.cdm_steps``); ``cdm_finetune = 0`` trains the CDM arm from scratch.
    Keys renamed since runs were first saved are in :data:`RENAMED`; a saved config with an old name loads."""

    n_seeds: int = 1  # image training seeds per arm (the paper trains one)
    # Seeds 0 … sweep_seeds − 1 run the full sampler × step sweep of 04; the others only the headline
    # cells (sample.methods[0] at headline_steps; () = the two smallest sample.steps). 0: all seeds, full sweep.
    sweep_seeds: int = 0
    headline_steps: tuple[int, ...] = ()
    # The confirmatory family, declared before any data ("ddim-10", …; () = the headline cells): Holm runs
    # within it and, separately, within the exploratory rest (lib.experiment.sweep.families, notebook 05).
    primary: tuple[str, ...] = ()
    workers: int = 0  # parallel single-threaded worker processes (lib.experiment.workers); 0: os.cpu_count(); 1: in this process
    related_steps: tuple[int, ...] = (10, 20, 50, 100)  # step counts of notebook 06
    related_seeds: int = 0  # training seeds 0 … related_seeds − 1 in notebook 06's neighbour cells; 0: every seed
    related_n_samples: int = 0  # samples per image cell in 06
    related_toy_samples: int = 0  # samples per toy cell in 06 (its MMD costs ~1 s per cell at 5000)
    cdm_finetune: int = 0  # > 0: the CDM arm (and its control) fine-tune the baseline for this many steps
    cdm_toy_finetune: int = 0  # the same for the toy
    cdm_chain_steps: int = 0  # Euler–Maruyama steps per CDM chain during the fine-tune
    cdm_ft_ema_decay: float = 0.99  # EMA decay during the fine-tune, so the EMA weights reflect it
    related_rho_top: tuple[float, ...] = (1.0, 0.95, 0.9)  # Skip-Tuning's ρ at the outermost skip
    related_rho_bottom: tuple[float, ...] = (1.0, 0.9, 0.8, 0.7)  # Skip-Tuning's ρ at the innermost skip
    related_es_b: tuple[float, ...] = (1.002, 1.004, 1.006, 1.01, 1.02)  # ε scaling λ_t = b: the constants searched
    related_es_k: tuple[float, ...] = (-0.01, 0.01, 0.02)  # ε scaling λ_t = b + k·(t/(T−1) − ½): slopes at the best b
    # The dose–response test of the shrinkage explanation (lib.experiment.dose): S²-DM trained at the loss
    # strengths zip(dose_skip, dose_tau) (the toy at every one with toy.n_seeds seeds); the settings
    # indexed by dose_image_settings also train as images with seeds 0 … min(dose_image_seeds, n_seeds) − 1. A setting
    # equal to (loss.skip, loss.tau) is the s2dm arm itself and is not trained twice.
    dose_skip: tuple[int, ...] = (9, 9, 99)
    dose_tau: tuple[float, ...] = (0.99, 0.9, 0.99)
    dose_image_settings: tuple[int, ...] = (0, 2)
    dose_image_seeds: int = 3
    # DDPM-IP beside S²-DM (lib.experiment.shrinkers): γ matched to the setting dose_ip_match (equal mean λ_t − 1 over
    # the DDIM-10 grid; −1: none) and the fixed γ of dose_ip_gamma, the toy at each with toy.n_seeds seeds, images
    # at the matched γ with the dose image seeds.
    dose_ip_match: int = 2
    dose_ip_gamma: tuple[float, ...] = (0.1,)
    # The positive control: constant ε scaling λ on the baseline (DDIM, related_steps), seeds 0 … min(control_seeds, n_seeds) − 1.
    control_lambdas: tuple[float, ...] = (0.98, 0.99, 0.995, 1.005, 1.01, 1.02)
    control_seeds: int = 3
    # A rehearsal of the GPU route (scripts/rehearse.py): the path of the manifest that names its fixtures (a
    # stand-in feature network, its reference statistics, a checkpoint with its MD5). Empty in every real run:
    # nothing finds a manifest by itself, so a real run never reads a fixture.
    rehearsal: str = ""


# Keys renamed after runs had been saved with them (old -> new): a saved config.json with an old name loads
# under the new one (lib.infra.config.from_dict); an override naming the old key is refused with the new name.
RENAMED = {"rho_top": "related_rho_top", "rho_bottom": "related_rho_bottom",
           "es_b": "related_es_b", "es_k": "related_es_k"}


def validate_experiment(x: ExperimentConfig, T: int) -> ExperimentConfig:
    """Reject an impossible experiment design, naming the key."""
    need(x.n_seeds >= 1 and x.workers >= 0,
         f"experiment.n_seeds must be >= 1 and experiment.workers >= 0, got {x.n_seeds}, {x.workers}")
    need(0 <= x.sweep_seeds <= x.n_seeds, f"experiment.sweep_seeds must lie in [0, n_seeds={x.n_seeds}] (0: every "
         f"seed runs the full sweep), got {x.sweep_seeds}")
    need(all(isinstance(k, int) and 1 <= k <= T for k in x.headline_steps),
         f"experiment.headline_steps must be positive integers <= T={T}, got {x.headline_steps}")
    need(all(isinstance(k, str) and "-" in k and k.rsplit("-", 1)[1].isdigit() for k in x.primary),
         f"experiment.primary names cells as 'sampler-steps' (e.g. 'ddim-10'), got {x.primary}")
    need(x.related_steps and all(isinstance(k, int) and 1 <= k <= T for k in x.related_steps),
         f"experiment.related_steps must be positive integers <= T={T}, got {x.related_steps}")
    for k in ("related_n_samples", "related_toy_samples", "cdm_finetune", "cdm_toy_finetune", "cdm_chain_steps",
              "related_seeds"):
        need(getattr(x, k) >= 0, f"experiment.{k} must be >= 0 (0: the profile's value), got {getattr(x, k)}")
    need(x.related_n_samples != 1 and x.related_toy_samples != 1,
         "experiment.related_n_samples / related_toy_samples must be 0 or >= 2")
    need(0.0 <= x.cdm_ft_ema_decay < 1.0, f"experiment.cdm_ft_ema_decay must lie in [0, 1), got {x.cdm_ft_ema_decay}")
    for k in ("related_rho_top", "related_rho_bottom", "related_es_b"):
        need(getattr(x, k) and all(isinstance(v, (int, float)) and v > 0 for v in getattr(x, k)),
             f"experiment.{k} must be a non-empty tuple of positive numbers, got {getattr(x, k)}")
    return validate_dose(x, T)


def validate_dose(x: ExperimentConfig, T: int) -> ExperimentConfig:
    """Reject an impossible dose–response design (lib.experiment.dose), naming the key."""
    n = len(x.dose_skip)
    need(n != 0 and len(x.dose_tau) == n, f"experiment.dose_skip and experiment.dose_tau are zipped: they need the "
         f"same non-zero length, got {x.dose_skip} and {x.dose_tau}")
    for k, tau in zip(x.dose_skip, x.dose_tau):
        need(1 <= k < T and 0.0 < tau <= 1.0, f"experiment.dose_skip/dose_tau: each setting needs 1 <= skip < T={T} "
             f"and 0 < tau <= 1, got skip {k}, tau {tau}")
    need(len(set(zip(x.dose_skip, x.dose_tau))) == n,
         f"experiment.dose_skip/dose_tau: a setting is listed twice: {list(zip(x.dose_skip, x.dose_tau))}")
    need(all(0 <= i < n for i in x.dose_image_settings) and len(set(x.dose_image_settings)) == len(x.dose_image_settings),
         f"experiment.dose_image_settings must be distinct indices into the {n} dose settings, got {x.dose_image_settings}")
    need(-1 <= x.dose_ip_match < n, f"experiment.dose_ip_match must index one of the {n} dose settings, or be -1 "
         f"(no matched IP dose), got {x.dose_ip_match}")
    need(all(isinstance(g, (int, float)) and not isinstance(g, bool) and 0 < g < 10 for g in x.dose_ip_gamma),
         f"experiment.dose_ip_gamma must be numbers in (0, 10), got {x.dose_ip_gamma}")
    for k in ("dose_image_seeds", "control_seeds"):  # used up to experiment.n_seeds (the baseline's seeds)
        need(not isinstance(getattr(x, k), bool) and getattr(x, k) >= 1, f"experiment.{k} must be >= 1, got {getattr(x, k)}")
    need(x.control_lambdas and all(v > 0 for v in x.control_lambdas),
         f"experiment.control_lambdas must be a non-empty tuple of positive numbers, got {x.control_lambdas}")
    return x
