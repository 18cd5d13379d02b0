"""Fixed, deterministic ε-models shared by the sampler tests."""
import torch

from lib.analytic import gmm_eps


def mixture_model(schedule, d=16, seed=0):
    """A fixed nonlinear per-sample ε-model: the exact GMM ε plus a small tanh of a linear map."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(3, d, generator=g, dtype=torch.float64)
    W = torch.randn(d, d, generator=g, dtype=torch.float64) / 4

    def model(x, t):
        return gmm_eps(x, t, schedule, means, 0.3, [0.5, 0.3, 0.2]) + 0.05 * torch.tanh(x @ W.to(x.dtype))

    return model
