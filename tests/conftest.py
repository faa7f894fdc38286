"""Test-wide settings: one thread per process (2 spinning threads on a busy 2-core machine ran
10–30× slower)."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "passive")

import torch  # noqa: E402

torch.set_num_threads(1)
