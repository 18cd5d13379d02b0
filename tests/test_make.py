"""The Makefile's environment logic without building anything: which index torch comes from, and how
`make lab` starts JupyterLab (a fake pip and `make -n`; no network)."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UNREACHABLE = "http://127.0.0.1:9/whl/cpu"  # the discard port: refused at once, with or without a network


def make(*args, path_extra=None):
    if shutil.which("make") is None:
        pytest.skip("needs make")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "MFLAGS"))}
    if path_extra is not None:  # a PATH with only the basic tools (and, if given, a fake nvidia-smi)
        env["PATH"] = os.pathsep.join([str(path_extra), "/usr/bin", "/bin"])
    return subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), *args], capture_output=True, text=True,
                          env=env)


@pytest.fixture
def bins(tmp_path):
    """(folder without nvidia-smi, folder with a fake one)."""
    plain, gpu = tmp_path / "plain", tmp_path / "gpu"
    plain.mkdir(), gpu.mkdir()
    (gpu / "nvidia-smi").write_text("#!/bin/sh\nexit 0\n")
    (gpu / "nvidia-smi").chmod(0o755)
    return plain, gpu


def pip_lines(r):
    return [ln for ln in r.stdout.splitlines() if ln.startswith("install ")]


def test_cpu_machine_falls_back_to_the_default_index_when_the_cpu_index_is_unreachable(bins):
    plain, _ = bins
    r = make("torch", "PIP=echo", f"TORCH_CPU_URL={UNREACHABLE}", path_extra=plain)
    assert r.returncode == 0, r.stderr
    assert f"the CPU wheel index {UNREACHABLE} is unreachable: torch from the default index instead" in r.stdout
    assert pip_lines(r) == ["install --quiet torch==2.14.1 torchvision==0.29.1"], r.stdout


def test_cpu_machine_installs_from_the_cpu_index_when_it_is_reachable(bins):
    plain, _ = bins
    r = make("torch", "PIP=echo", "TORCH_PROBE=true", path_extra=plain)
    assert r.returncode == 0, r.stderr
    pins = " ".join(ln for ln in (ROOT / "requirements.txt").read_text().splitlines()
                    if ln.startswith(("torch==", "torchvision==")))
    assert pip_lines(r) == [f"install --quiet --index-url https://download.pytorch.org/whl/cpu {pins}"], r.stdout


def test_gpu_machine_and_the_override_use_the_default_index(bins):
    plain, gpu = bins
    for args, where in ((["TORCH_PROBE=true"], gpu), (["TORCH_PROBE=true", "TORCH_INDEX=cuda"], plain),
                        (["TORCH_PROBE=true", "TORCH_INDEX=default"], plain)):
        r = make("torch", "PIP=echo", *args, path_extra=where)
        assert r.returncode == 0 and "--index-url" not in r.stdout and pip_lines(r), (args, r.stdout)
    r = make("torch", "PIP=echo", "TORCH_PROBE=false", "TORCH_INDEX=cpu", path_extra=gpu)
    assert "unreachable" in r.stdout  # the override wins over the GPU found
    r = make("torch", "PIP=echo", "TORCH_INDEX=rocm", path_extra=plain)
    assert r.returncode != 0 and "TORCH_INDEX=rocm is not one of auto, cpu, cuda, default" in r.stderr


def test_lab_registers_a_per_clone_kernel_inside_the_venv_and_runs_as_root():
    r = make("-n", "lab", "PY=echo-python", "VENV=/nonexistent-venv")
    assert r.returncode == 0, r.stderr
    reg = next(ln for ln in r.stdout.splitlines() if "ipykernel install" in ln)
    assert "--sys-prefix" in reg and "--user" not in reg
    kernel = reg.split("--name ")[1].split()[0]
    assert kernel.startswith("s2dm-") and kernel != "s2dm-"
    lab = next(ln for ln in r.stdout.splitlines() if " lab " in ln)
    assert f"default_kernel_name={kernel}" in lab and f"allowed_kernelspecs={kernel}" in lab
    assert ("--allow-root" in lab) == (os.getuid() == 0), lab
    other = subprocess.run(["make", "--no-print-directory", "-n", "-f", str(ROOT / "Makefile"), "lab", "PY=x",
                            "VENV=/nonexistent-venv"], capture_output=True, text=True, cwd="/tmp")
    assert kernel not in other.stdout, "another clone (another path) must get another kernel name"
