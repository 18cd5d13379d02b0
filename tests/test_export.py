"""`python -m lib.pretrained export RUN_DIR OUT_DIR`: a run's EMA weights as a diffusers UNet2DModel folder
that diffusers loads and that predicts the run's ε within 1e-5 (float32, CPU); unrepresentable runs refused."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def cli(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=600)


def train(out: Path, *sets, toy=False):
    r = cli("lib.train", "--profile", "ci", "--arm", "baseline", "--out", str(out), "--quiet",
            "--set", "train.steps=2", *[a for s in sets for a in ("--set", s)], *(["--toy"] if toy else []))
    assert r.returncode == 0, r.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def wide_run(tmp_path_factory):
    """A ci-sized run whose widths (128) all get 32 GroupNorm groups: representable by UNet2DModel."""
    return train(tmp_path_factory.mktemp("export") / "run", "model.ch=128", "model.ch_mult=[1,1]")


def test_export_loads_in_diffusers_and_predicts_the_same_eps(wide_run, tmp_path):
    from diffusers import DDIMPipeline, DDIMScheduler, UNet2DModel

    from lib import pretrained
    out = tmp_path / "hf"
    r = cli("lib.pretrained", "export", str(wide_run), str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    assert {"config.json", "diffusion_pytorch_model.safetensors", "scheduler_config.json"} <= {p.name for p in out.iterdir()}
    assert "max |Δε|" in r.stdout
    theirs = UNet2DModel.from_pretrained(str(out), low_cpu_mem_usage=False).eval()
    ours, cfg = pretrained.load_unet(wide_run)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, cfg.in_channels, cfg.resolution, cfg.resolution, generator=g)
    t = torch.tensor([0, 10, 500, 999])
    with torch.no_grad():
        diff = (ours(x, t) - theirs(x, t).sample).abs().max().item()
    assert diff < 1e-5, diff
    assert json.loads((out / "export.json").read_text())["max_abs_eps_diff"] < 1e-5
    # the README's three lines (docs/notebooks.md): sample it with diffusers' DDIMPipeline
    pipe = DDIMPipeline(UNet2DModel.from_pretrained(str(out), low_cpu_mem_usage=False), DDIMScheduler.from_pretrained(str(out)))
    images = pipe(batch_size=2, num_inference_steps=2, output_type="np").images
    assert images.shape == (2, cfg.resolution, cfg.resolution, cfg.in_channels)


def test_the_model_card_says_how_the_run_was_trained_and_measured(wide_run, tmp_path):
    from lib.pretrained.export import run_fingerprint

    out = tmp_path / "hf"
    assert cli("lib.pretrained", "export", str(wide_run), str(out)).returncode == 0
    card = (out / "README.md").read_text()
    meta = card.split("---\n")[1]
    for line in ("library_name: diffusers", "pipeline_tag: unconditional-image-generation", "- arxiv:2401.01520",
                 "- arm:baseline", "- profile:ci", "- digits"):
        assert line in meta.splitlines(), (line, meta)
    run = json.loads((wide_run / "run.json").read_text())
    assert f"`{run_fingerprint(run)}`" in card and "| training steps | 2 " in card
    assert "| measured | none" in card and "model-index" not in meta
    assert "`python -m lib.train --profile ci --arm baseline" in card and str(ROOT) not in card


def test_one_group_count_exports_a_small_run_and_its_measurement_reaches_the_card(tmp_path):
    run = train(tmp_path / "ci4")  # the ci profile's widths 16/32 with its one group count (model.norm_groups 4)
    (run / "metric.json").write_text(json.dumps({"name": "KID", "value": 0.0123, "lo": 0.01, "hi": 0.015,
                                                 "covers": "95 % bootstrap over samples"}))
    r = cli("lib.pretrained", "export", str(run), str(tmp_path / "hf"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["norm_num_groups"] == 4
    card = (tmp_path / "hf" / "README.md").read_text()
    assert "| measured | KID 0.0123 [0.01, 0.015] (95 % bootstrap over samples) |" in card
    assert "model-index:" in card.split("---\n")[1]


def test_export_refuses_what_diffusers_cannot_represent(tmp_path):
    ci = train(tmp_path / "ci", "model.norm_groups=0")  # widths 16/32: this project's width rule gives 4 and 8 groups
    r = cli("lib.pretrained", "export", str(ci), str(tmp_path / "out"))
    assert r.returncode == 2 and "norm_num_groups" in r.stderr and "Traceback" not in r.stderr, r.stderr
    toy = train(tmp_path / "toy", toy=True)
    r = cli("lib.pretrained", "export", str(toy), str(tmp_path / "out2"))
    assert r.returncode == 2 and "model.kind is 'mlp'" in r.stderr, r.stderr
    r = cli("lib.pretrained", "export", str(tmp_path / "nothing"), str(tmp_path / "out3"))
    assert r.returncode == 2 and "not a finished lib.train run" in r.stderr, r.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "out2").exists()
