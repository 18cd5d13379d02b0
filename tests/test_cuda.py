"""Correctness on a CUDA device: the device against the CPU from the same inputs (``pytest -m cuda``).

Skipped without a GPU (the ``cuda`` marker, registered in pyproject.toml; tests/conftest.py skips it as
diffusers' ``require_torch_gpu`` does). ``bench/gpu_check.py`` runs these tests as its correctness
section within its time budget; its ``--dry-run`` runs them on the CPU at tiny sizes
(``S2DM_CUDA_TESTS_ON_CPU=1``: the same code paths, CPU against CPU, and bf16 against float32).

What is compared: every sampler of lib.samplers.METHODS from the same x_T and noise; one
``lib.train.train_step`` in float32 and as the gpu profile runs it (bf16 autocast, channels_last, fused
Adam); channels_last against contiguous; fused against foreach Adam; lib.generate; and DDP through
torchrun with one process (NCCL on CUDA). The network is the paper UNet with random weights, dropout 0.
'float32' means TF32 off for matmuls and cuDNN.
"""
import copy
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from gpu_speed import experiment_config, fixed_inputs  # noqa: E402  (bench/gpu_speed.py)
from lib import data as data_mod  # noqa: E402
from lib import generate as gen  # noqa: E402
from lib import samplers  # noqa: E402
from lib.experiment.steptime import StepVariant, float32_precision  # noqa: E402
from lib.factory import build_model, schedule_of  # noqa: E402
from lib.infra import checkpoint as ckpt  # noqa: E402
from lib.losses import s2dm_loss  # noqa: E402

pytestmark = pytest.mark.cuda
ON_CPU = os.environ.get("S2DM_CUDA_TESTS_ON_CPU") == "1"  # the GPU check's dry run
DEV, REF = torch.device("cpu" if ON_CPU else "cuda"), torch.device("cpu")
CUDA = DEV.type == "cuda"
SAMPLER_BATCH, SAMPLER_STEPS = 2, 10
STEP_BATCH, GEN_N = (2, 4) if ON_CPU else (4, 8)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ in float64 (CPU)."""
    a, b = a.detach().double().cpu().flatten(), b.detach().double().cpu().flatten()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def flat_grads(model) -> torch.Tensor:
    return torch.cat([p.grad.detach().float().flatten().cpu() for p in model.parameters() if p.grad is not None])


def flat_params(model) -> torch.Tensor:
    return torch.cat([p.detach().float().flatten().cpu() for p in model.parameters()])


def fixed_noise_loss(cfg, schedule, t, noise, noise_skip):
    """The S²-DM arm's loss (lib.losses.s2dm_loss, the configured skip and τ) with t, ε, ε′ given."""
    L = cfg.loss

    def loss_fn(net, x0, generator, parts):
        d = x0.device
        return s2dm_loss(net, x0, schedule, skip=L.skip, tau=L.tau, t=t.to(d), noise=noise.to(d),
                         noise_skip=noise_skip.to(d), parts=parts)
    return loss_fn


def _config():
    cfg = experiment_config(ON_CPU)
    return replace(cfg, model=replace(cfg.model, dropout=0.0))  # dropout masks come from each device's own RNG


@pytest.fixture(scope="module")
def setup():
    cfg = _config()
    torch.manual_seed(0)
    base = build_model(cfg.model).eval()
    m = cfg.model
    return cfg, schedule_of(cfg), base, (m.in_channels, m.resolution, m.resolution)


# ---------------------------------------------------------------------------- samplers
@pytest.mark.parametrize("method", list(samplers.METHODS))
def test_sampler_on_the_device_matches_the_cpu(setup, method, record_property):
    """Same x_T (lib.generate.initial_noise) and the same noise stream: the generator lives on the CPU
    for both runs, so stochastic solvers (noise drawn by lib.transfer.noise_like, then moved) agree."""
    cfg, schedule, base, shape = setup
    seed = 1234
    x_T = gen.initial_noise(shape, 0, SAMPLER_BATCH, seed)
    outs = []
    for model, d in ((base, REF), (copy.deepcopy(base).to(DEV), DEV)):
        with float32_precision("float32"):
            outs.append(samplers.sample(model, x_T.to(d), schedule, SAMPLER_STEPS, method,
                                        generator=torch.Generator().manual_seed(seed * 7919)).cpu())
    r = rel(outs[1], outs[0])
    record_property("measured", f"relative L2 {r:.3g} (<= 1e-3)")  # the GPU check's report shows it
    assert torch.isfinite(outs[1]).all() and r <= 1e-3  # float32


# ---------------------------------------------------------------------------- one training step
@pytest.fixture(scope="module")
def steps(setup):
    """One lib.train.train_step per variant from the same weights and inputs: the CPU reference in
    float32, and on the device float32, the gpu profile's settings, channels_last and fused Adam."""
    cfg, schedule, base, _ = setup
    x0, t, noise, noise_skip = fixed_inputs(cfg, STEP_BATCH)
    loss_fn = fixed_noise_loss(cfg, schedule, t, noise, noise_skip)
    w0 = flat_params(base)

    def step(device, **kw):
        v = StepVariant("check", copy.deepcopy(base), loss_fn, cfg.train, device, **kw)
        loss, _, gn = v.step(v.batch(x0))
        return {"loss": float(loss), "grad_norm": float(gn), "grads": flat_grads(v.model),
                "delta": flat_params(v.model) - w0}

    res = {"cpu": step(REF, precision="float32"), "float32": step(DEV, precision="float32"),
           "bf16": step(DEV, amp="bf16", channels_last=True, fused=CUDA),  # lib.train fuses Adam on CUDA only
           "float32_cl": step(DEV, precision="float32", channels_last=True)}
    if CUDA:
        res["float32_fused"] = step(DEV, precision="float32", fused=True)
    g0 = res["cpu"]["grads"]
    res["sure"] = g0.abs() > 1e-3 * g0.pow(2).mean().sqrt()  # coordinates whose gradient sign rounding cannot flip
    return res, x0, t


# (variant, tolerances of the loss, of the gradient (norm and L2), of the Adam update or None)
VARIANTS = [("float32", 1e-4, 1e-3, 1e-3), ("bf16", 2e-2, 0.15, None), ("float32_cl", 1e-4, 1e-3, 1e-3)]
if CUDA:
    VARIANTS.append(("float32_fused", 1e-4, 1e-3, 1e-3))


@pytest.mark.parametrize("key,lt,gt,ut", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_train_step_on_the_device_matches_the_cpu_float32(steps, key, lt, gt, ut, record_property):
    """bf16 is the gpu profile (bf16 autocast, channels_last, fused Adam on CUDA). The Adam update is
    compared on the coordinates with |g| > 1e-3·rms(g): its first update is lr·g/(|g|+eps), whose sign
    flips with rounding where g ≈ 0."""
    res, _, _ = steps
    out, r0 = res[key], res["cpu"]
    rl = abs(out["loss"] - r0["loss"]) / abs(r0["loss"])
    rg = abs(out["grad_norm"] - r0["grad_norm"]) / r0["grad_norm"]
    rgr = rel(out["grads"], r0["grads"])
    ru = rel(out["delta"][res["sure"]], r0["delta"][res["sure"]]) if ut is not None else None
    record_property("measured", f"loss {rl:.3g} (<= {lt:g}), gradient norm {rg:.3g} and gradients {rgr:.3g} (<= {gt:g})"
                    + ("" if ru is None else f", Adam update {ru:.3g} (<= {ut:g})") + " relative")
    assert rl <= lt and rg <= gt and rgr <= gt
    assert ru is None or ru <= ut


def test_channels_last_matches_contiguous_on_the_device(setup, steps, record_property):
    _, _, base, _ = setup
    res, x0, t = steps
    rg = rel(res["float32_cl"]["grads"], res["float32"]["grads"])
    with torch.no_grad(), float32_precision("float32"):
        xa, net = x0.to(DEV), copy.deepcopy(base).to(DEV)
        yb = net(xa, t.to(DEV))
        net = net.to(memory_format=torch.channels_last)
        ya = net(xa.contiguous(memory_format=torch.channels_last), t.to(DEV))
    ry = rel(ya, yb)
    record_property("measured", f"gradients {rg:.3g} (<= 1e-3), ε-network output {ry:.3g} (<= 1e-4) relative L2")
    assert rg <= 1e-3 and ry <= 1e-4


@pytest.mark.skipif(not CUDA, reason="fused Adam runs on CUDA only")
def test_fused_adam_matches_foreach_on_the_device(steps, record_property):
    res, _, _ = steps
    r = rel(res["float32_fused"]["delta"][res["sure"]], res["float32"]["delta"][res["sure"]])
    record_property("measured", f"the update {r:.3g} (<= 1e-3) relative L2, |g| > 1e-3·rms(g)")
    assert r <= 1e-3


# ---------------------------------------------------------------------------- lib.generate
def test_generate_on_the_device_matches_the_cpu(setup, record_property):
    """DDIM-10 in float32 and as lib.generate runs by default (cuDNN convolutions in TF32, 10 mantissa
    bits), and DDPM: lib.generate draws a stochastic sampler's noise from a CPU generator."""
    _, schedule, base, shape = setup
    model_dev = copy.deepcopy(base).to(DEV)
    kw = dict(method="ddim", num_steps=10, batch_size=max(1, GEN_N // 2), seed=7, progress=False)
    with float32_precision("float32"):
        b = gen.generate(base, schedule, shape, GEN_N, device=REF, **kw)
        a = gen.generate(model_dev, schedule, shape, GEN_N, device=DEV, **kw)
    r32 = rel(a, b)
    a = gen.generate(model_dev, schedule, shape, GEN_N, device=DEV, **kw)  # torch's default flags
    rdef = rel(a, b)
    off = float(((data_mod.from_model_range(a).int() - data_mod.from_model_range(b).int()).abs() > 1).float().mean())
    kw["method"] = "ddpm"
    with float32_precision("float32"):
        a = gen.generate(model_dev, schedule, shape, GEN_N, device=DEV, **kw)
        b = gen.generate(base, schedule, shape, GEN_N, device=REF, **kw)
    rddpm = rel(a, b)
    record_property("measured", f"DDIM-10 float32 {r32:.3g} (<= 1e-3), default flags {rdef:.3g} (<= 5e-2; uint8 pixels "
                    f"more than 1 level off: {off:.2e}), DDPM {rddpm:.3g} (<= 1e-3) relative L2")
    assert r32 <= 1e-3 and rdef <= 5e-2 and rddpm <= 1e-3


# ---------------------------------------------------------------------------- DDP
def test_ddp_through_torchrun_matches_no_ddp(tmp_path, record_property):
    """torchrun, one process, NCCL on CUDA (gloo in the dry run): two train_steps through DDP against
    two without, and the collectives lib.train and lib.generate use."""
    out = tmp_path / "ddp.json"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR",
                                                          "MASTER_PORT", "LOCAL_WORLD_SIZE")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
                        __file__, str(out)], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and out.exists(), (r.stdout + r.stderr)[-2000:]
    w = json.loads(out.read_text())
    record_property("measured", f"{w['backend']}: parameters after 2 steps {w['param_rel']:.3g} (<= 1e-4) relative L2, "
                    f"collectives {'ok' if w['collectives_ok'] else 'WRONG'}")
    assert w["param_rel"] <= 1e-4, w
    assert w["collectives_ok"], w


def _ddp_worker(result_path: str) -> int:
    """Under torchrun (the test above): DDP's two steps against two plain ones, then the collectives."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from lib.infra import distributed

    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if CUDA else DEV
    if CUDA:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if CUDA else "gloo")  # lib.infra.distributed's rule (started even for 1 process)
    ctx = distributed.current(device)
    try:
        cfg = _config()
        schedule = schedule_of(cfg)
        torch.manual_seed(0)
        base = build_model(cfg.model)
        x0, t, noise, noise_skip = fixed_inputs(cfg, 2 if ON_CPU else 8)
        loss_fn = fixed_noise_loss(cfg, schedule, t, noise, noise_skip)
        kw = dict(precision="float32", channels_last=not ON_CPU, fused=CUDA)
        plain = StepVariant("plain", copy.deepcopy(base), loss_fn, cfg.train, ctx.device, **kw)
        wrapped = StepVariant("ddp", copy.deepcopy(base), loss_fn, cfg.train, ctx.device, **kw)
        wrapped.net = DistributedDataParallel(wrapped.model, device_ids=[ctx.device] if CUDA else None)
        for _ in range(2):
            plain.step(plain.batch(x0))
            wrapped.step(wrapped.batch(x0))
        param_rel = rel(flat_params(wrapped.model), flat_params(plain.model))
        v = torch.ones(3, device=ctx.device)
        dist.all_reduce(v)
        got = ctx.gather({"rank": ctx.rank, "x": torch.arange(3.0)})  # lib.generate's pattern
        dist.barrier()
        ok = bool((v.cpu() == ctx.world).all()) and got[0]["rank"] == 0 and bool((got[0]["x"] == torch.arange(3.0)).all())
        if ctx.main:
            ckpt.atomic_write_text(result_path, json.dumps({
                "backend": dist.get_backend(), "world_size": ctx.world, "device": str(ctx.device),
                "param_rel": param_rel, "collectives_ok": ok}))
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(_ddp_worker(sys.argv[1]))
