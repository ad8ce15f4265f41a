"""The calls unigrad makes into dependencies that no other test reaches, so that the suite run at
pyproject's lower bounds (scripts/lower_bounds.sh) tests those bounds too."""
import importlib.util
from types import SimpleNamespace

import pytest
import torch

from unigrad.optim import make_optimizer
from unigrad.report import MetricsLog


def test_a_pytorch_optimizer_name_builds_a_working_optimizer():
    pytest.importorskip("pytorch_optimizer")
    cfg = SimpleNamespace(optimizer="lion", lr=0.1, weight_decay=0.0, betas=(0.9, 0.99), optimizer_in_backward=False)
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = make_optimizer([weight], cfg)
    assert type(optimizer).__module__.startswith("pytorch_optimizer")
    weight.sum().backward()
    optimizer.step()
    assert torch.allclose(weight.detach(), torch.full((3,), 0.9))   # Lion: w - lr · sign(gradient)


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard is not installed")
def test_metrics_reach_tensorboard_when_it_is_installed(tmp_path):
    log = MetricsLog(tmp_path, 0, tensorboard=True)
    assert log.writer is not None, "tensorboard is installed but torch's SummaryWriter could not start"
    log.write(1, {"loss": 0.5})
    log.close()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
