"""Updating each parameter inside backward (``train.optimizer_in_backward``) is the usual update when
the step is one backward pass without global-norm clipping, and its checkpoints are interchangeable
with the usual optimiser's in both directions."""
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file

from unigrad.config import ConfigError, load_config
from unigrad.train import train

ROOT = Path(__file__).resolve().parents[2]
COMMON = ["train.steps=4", "train.save_every=2", "train.eval_every=0", "data.eval=null", "train.max_grad_norm=null",
          "train.threads=1"]


def _run(out: Path, *extra: str, resume: bool = False) -> dict:
    config = load_config(str(ROOT / "configs" / "tiny-dpo.yaml"), [*COMMON, f"output_dir={out}", *extra])
    return train(config, resume=resume, progress=False)


def _max_diff(a: Path, b: Path) -> float:
    x, y = load_file(str(a / "final" / "model.safetensors")), load_file(str(b / "final" / "model.safetensors"))
    return max(float((x[k] - y[k]).abs().max()) for k in x)


def test_in_backward_is_the_usual_update_and_checkpoints_interchange(tmp_path):
    usual = _run(tmp_path / "usual")
    inside = _run(tmp_path / "inside", "train.optimizer_in_backward=true")
    assert _max_diff(tmp_path / "usual", tmp_path / "inside") < 1e-6
    assert inside["grad_norm"] == pytest.approx(usual["grad_norm"], rel=1e-5)
    assert inside["grad_norm"] > 0
    # resume an in-backward run from the usual optimiser's step-2 checkpoint, and the other way round
    for source, target, extra in (("usual", "usual-then-inside", ["train.optimizer_in_backward=true"]),
                                  ("inside", "inside-then-usual", [])):
        (tmp_path / target).mkdir()
        shutil.copytree(tmp_path / source / "checkpoints", tmp_path / target / "checkpoints")
        for later in (tmp_path / target / "checkpoints").glob("step-*"):
            if later.name != "step-000002":
                shutil.rmtree(later)
        assert (tmp_path / target / "checkpoints" / "step-000002").is_dir()
        _run(tmp_path / target, *extra, resume=True)
        logged = (tmp_path / target / "metrics.jsonl").read_text()
        assert '"step": 3' in logged and '"step": 1,' not in logged   # it went on from step 2
        assert _max_diff(tmp_path / "usual", tmp_path / target) < 1e-6


@pytest.mark.parametrize("override, named", [("train.max_grad_norm=1.0", "max_grad_norm"),
                                             ("train.grad_accum=2", "grad_accum")])
def test_in_backward_refuses_what_would_change_the_update(tmp_path, override, named):
    with pytest.raises(ConfigError, match=named):
        _run(tmp_path, "train.optimizer_in_backward=true", override)
