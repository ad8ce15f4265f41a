"""Checkpoints keep one copy of the weights: full fine-tuning resumes from the HF folder, LoRA from its
trainable adapters; both resume to the uninterrupted result."""
import shutil
from pathlib import Path

from safetensors.torch import load_file

from unigrad.config import load_config
from unigrad.train import train

ROOT = Path(__file__).resolve().parents[2]
COMMON = ["train.steps=4", "train.save_every=2", "train.eval_every=0", "data.eval=null", "train.threads=1"]


def _run(out: Path, *extra: str, resume: bool = False) -> None:
    train(load_config(str(ROOT / "configs" / "tiny-dpo.yaml"), [*COMMON, f"output_dir={out}", *extra]),
          resume=resume, progress=False)


def _resume_from_step_2(tmp_path: Path, *extra: str) -> float:
    _run(tmp_path / "straight", *extra)
    checkpoint = tmp_path / "straight" / "checkpoints" / "step-000002"
    assert checkpoint.is_dir()
    (tmp_path / "resumed" / "checkpoints").mkdir(parents=True)
    shutil.copytree(checkpoint, tmp_path / "resumed" / "checkpoints" / "step-000002")
    _run(tmp_path / "resumed", *extra, resume=True)
    logged = (tmp_path / "resumed" / "metrics.jsonl").read_text()
    assert '"step": 3' in logged and '"step": 1,' not in logged        # it went on from step 2
    a = load_file(str(tmp_path / "straight" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "final" / "model.safetensors"))
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_full_fine_tuning_checkpoint_has_one_copy_and_resumes(tmp_path):
    assert _resume_from_step_2(tmp_path) < 1e-6
    checkpoint = tmp_path / "straight" / "checkpoints" / "step-000002"
    assert not (checkpoint / "trainable.safetensors").exists()
    assert (checkpoint / "model" / "model.safetensors").exists()


def test_lora_checkpoint_keeps_its_adapters_and_resumes(tmp_path):
    assert _resume_from_step_2(tmp_path, "model.lora.r=4") < 1e-6
    assert (tmp_path / "straight" / "checkpoints" / "step-000002" / "trainable.safetensors").exists()
