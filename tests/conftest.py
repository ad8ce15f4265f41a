"""Under pytest-xdist (``-n``: one test process per core) each process computes on one thread, and so do the
processes its tests launch: torch's own threads in every process would oversubscribe the cores many-fold."""
import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
