"""Test-suite settings: one intra-op thread per process; tests marked ``cuda`` skipped without a GPU.

The ci-sized tensors are tiny, and on a 2-core machine several torch processes (pytest, notebook
kernels, torchrun workers) spinning 2 threads each slow each other down by an order of magnitude."""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def pytest_collection_modifyitems(config, items):
    """Skip the ``cuda`` tests where no CUDA device is visible (as diffusers' ``require_torch_gpu``),
    unless the GPU check's dry run asks for them on the CPU (``S2DM_CUDA_TESTS_ON_CPU=1``)."""
    import pytest

    if torch.cuda.is_available() or os.environ.get("S2DM_CUDA_TESTS_ON_CPU") == "1":
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (pytest -m cuda on a GPU machine)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
