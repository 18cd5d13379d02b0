"""Test-suite settings: one intra-op thread per process.

The ci-sized tensors are tiny, and on a 2-core machine several torch processes (pytest, notebook
kernels, torchrun workers) spinning 2 threads each slow each other down by an order of magnitude."""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
