"""The three layouts satisfy one ``Layout`` protocol, and ``choose_layout`` picks from config and environment."""
from pathlib import Path

import pytest
import torch

from unigrad.config import ConfigError, load_config
from unigrad.parallel import FSDP2, Layout, Processes, Replicated, ZeRO, choose_layout

TINY = str(Path(__file__).resolve().parents[2] / "configs" / "tiny-dpo.yaml")
TWO = Processes(rank=0, world=2)


def test_every_layout_is_a_layout():
    for layout in (Replicated(TWO), FSDP2(TWO), ZeRO(TWO, {"zero_optimization": {"stage": 2}})):
        assert isinstance(layout, Layout)


def test_choose_layout_reads_the_config_and_the_launch_environment(monkeypatch):
    for name in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED", "FSDP_RESHARD_AFTER_FORWARD"):
        monkeypatch.delenv(name, raising=False)
    assert choose_layout(load_config(TINY, []), TWO, torch.float32) == Replicated(TWO)
    assert choose_layout(load_config(TINY, ["train.fsdp=true"]), TWO, torch.float32) == FSDP2(TWO)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_RESHARD_AFTER_FORWARD", "SHARD_GRAD_OP")
    assert choose_layout(load_config(TINY, []), TWO, torch.float32) == FSDP2(TWO, reshard_after_forward=False)
    with pytest.raises(ConfigError, match="train.fsdp: FSDP cannot run with one process"):
        choose_layout(load_config(TINY, []), Processes(), torch.float32)
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    with pytest.raises(ConfigError, match="train.deepspeed: 4 is not a ZeRO stage"):
        choose_layout(load_config(TINY, ["train.deepspeed=4"]), TWO, torch.float32)
