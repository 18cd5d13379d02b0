"""Numbers the papers report, in one place (docs/method.md §2 and §4 give the sources).

Every value is the paper's own, measured with the authors' models, training and FID pipeline; they
sit beside this project's numbers for orientation (and, on the same public weights, for calibration:
notebook 08), never as a result of this project. Keys are (method, steps) for step-count samplers and
(method, NFE) for Heun/Restart.
"""
from __future__ import annotations

__all__ = ["DDIM_TABLE1", "TIME_SHIFT_TABLE1", "RESTART_CIFAR10_VP", "S2DM_CLAIMS", "PAPER_ROWS", "cifar10_fid"]

# DDIM (Song et al. 2021), Table 1, FID with η = 0; CIFAR-10 on the 'quad' grid (DDPM's released
# weights), CelebA-64 on the 'uniform' grid; S = 10, 20, 50, 100, 1000.
DDIM_TABLE1 = {
    "cifar10": {"grid": "quad", "fid": {10: 13.36, 20: 6.84, 50: 4.67, 100: 4.16, 1000: 4.04}},
    "celeba": {"grid": "uniform", "fid": {10: 17.33, 20: 13.73, 50: 9.17, 100: 6.53, 1000: 3.51}},
}
DDPM_CIFAR10_FID = 3.17  # 1000 ancestral steps

# Time-Shift (Li et al. 2024), Table 1, CIFAR-10 ("DDIM checkpoint" backbone), S = 5/10/20/50/100,
# produced by the released code (ε queried at the nominal t; docs/method.md §4.1).
_S = (5, 10, 20, 50, 100)
TIME_SHIFT_TABLE1 = {
    "ddim": dict(zip(_S, (44.60, 18.71, 11.05, 7.09, 5.66))),
    "ts-ddim": dict(zip(_S, (35.13, 12.21, 8.03, 5.56, 4.56))),
    "pndm": dict(zip(_S, (31.30, 6.99, 4.34, 3.71, 4.03))),
    "ts-pndm": dict(zip(_S, (31.11, 3.88, 3.60, 3.56, 3.86))),
}

# Restart (Xu et al. 2023), CIFAR-10 VP: Heun alone at 35 NFE, Restart at K = 2/5/10/20 (NFE 43/55/75/115).
RESTART_CIFAR10_VP = {"heun": {35: 2.97}, "restart": {43: 2.70, 55: 2.45, 75: 2.27, 115: 2.21}}

# S²-DMs (Wang & Li 2024): relative FID improvement over the same samplers (DDIM, PNDM, DEIS), 10…1000 steps.
S2DM_CLAIMS = {"cifar10": (3.27, 14.06), "celeba": (8.97, 27.08)}  # percent, (lowest, highest)

# One row per neighbour for the papers' table of notebook 06.
PAPER_ROWS = [
    {"method": "Time-Shift on DDIM (uniform)", "paper": "Li et al. 2024", "data": "CIFAR-10", "setting": "S = 5/10/20/50/100",
     "baseline FID": "44.60/18.71/11.05/7.09/5.66", "method FID": "35.13/12.21/8.03/5.56/4.56"},
    {"method": "Time-Shift on F-PNDM", "paper": "Li et al. 2024", "data": "CIFAR-10", "setting": "S = 5/10/20/50/100",
     "baseline FID": "31.30/6.99/4.34/3.71/4.03", "method FID": "31.11/3.88/3.60/3.56/3.86"},
    {"method": "Restart (VP)", "paper": "Xu et al. 2023", "data": "CIFAR-10", "setting": "N=18, N_R=3, K=2/5/10/20 (NFE 43/55/75/115)",
     "baseline FID": "Heun 2.97 (35 NFE)", "method FID": "2.70/2.45/2.27/2.21"},
    {"method": "Skip-Tuning", "paper": "Ma et al. 2024", "data": "ImageNet-64 (EDM)", "setting": "19 / 39 NFE",
     "baseline FID": "(not recorded here)", "method FID": "1.75 / 1.57"},
    {"method": "CDM", "paper": "Daras et al. 2023", "data": "CIFAR-10 (EDM retrained)", "setting": "λ = 10, 5 EM steps",
     "baseline FID": "2.01", "method FID": "1.95"},
    {"method": "eps scaling", "paper": "Ning et al. 2023", "data": "-", "setting": "λ_t slightly > 1",
     "baseline FID": "(not recorded here)", "method FID": "(not recorded here)"},
    {"method": "S²-DM", "paper": "Wang & Li 2024", "data": "CIFAR-10 / CelebA", "setting": "DDIM, PNDM, DEIS, 10…1000 steps",
     "baseline FID": "-", "method FID": "3.27–14.06 % / 8.97–27.08 % better"},
]


def cifar10_fid(method: str, steps_or_nfe: int):
    """The CIFAR-10 FID a neighbour's paper reports for ``method`` at that step count (Time-Shift's
    Table 1) or NFE (Restart), or None."""
    if method in TIME_SHIFT_TABLE1:
        return TIME_SHIFT_TABLE1[method].get(steps_or_nfe)
    if method in RESTART_CIFAR10_VP:
        return RESTART_CIFAR10_VP[method].get(steps_or_nfe)
    return None
