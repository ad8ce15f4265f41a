"""``Batch.to_device`` moves every tensor of a batch: row fields, step-level ``extra`` fields, ``step`` and ``rows``."""
import torch
from torch import Tensor

import unigrad as ug


def _tensors(batch, where="batch"):
    """(path, tensor) for every tensor the batch holds, its step's included."""
    for name in ("logp", "mask", "logp_old", "logp_ref", "reward", "group", "sign", "rows"):
        value = getattr(batch, name)
        if value is not None:
            yield f"{where}.{name}", value
    for key, value in batch.extra.items():
        if isinstance(value, Tensor):
            yield f"{where}.extra[{key}]", value
    if batch.step is not None:
        yield from _tensors(batch.step, where + ".step")


def _step(rows=4, width=3):
    mask = torch.ones(rows, width)
    return ug.Batch(logp=torch.zeros(rows, width), mask=mask, logp_old=torch.zeros(rows, width),
                    logp_ref=torch.zeros(rows, width), reward=torch.arange(rows, dtype=torch.float32),
                    group=torch.tensor([0, 0, 1, 1]), sign=torch.ones(rows),
                    extra={"is_demo": torch.tensor([True, False, False, True]),
                           "value": torch.linspace(0, 1, rows), "note": "not a tensor"})


def test_to_device_moves_every_tensor_of_a_micro_batch_and_its_step():
    step = _step()
    micro = step.micro_batch(torch.tensor([1, 3]))
    micro = micro.replace(logp=torch.randn(2, 3, requires_grad=True))
    moved = micro.to_device("meta")
    found = dict(_tensors(moved))
    assert {"batch.extra[is_demo]", "batch.extra[value]", "batch.step.extra[is_demo]", "batch.step.extra[value]",
            "batch.rows", "batch.step.reward"} <= set(found)
    stayed = [path for path, tensor in found.items() if tensor.device.type != "meta"]
    assert not stayed, f"left off the target device: {stayed}"
    assert moved.extra["note"] == "not a tensor"
    assert moved.logp.requires_grad                        # moving keeps the graph to the student's log-probs
    assert moved.step.extra["is_demo"].dtype == torch.bool and moved.rows.dtype == torch.long


def test_to_device_on_a_whole_step():
    moved = _step().to_device("meta")
    assert moved.step is None and moved.rows is None
    assert all(tensor.device.type == "meta" for _, tensor in _tensors(moved))
