"""`train.gradient.name=mezo` trains every kind of method through the one loop (a preference, an RL,
an unlearning and a distillation method on the tiny model), MeZO-SGD keeps no gradient tensors,
MeZO with Adam goes through the optimiser, and a MeZO run resumes to the uninterrupted weights."""
import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file

from unigrad.config import ConfigError, load_config
from unigrad.run import assemble
from unigrad.train import train

ROOT = Path(__file__).resolve().parents[2]
MEZO = ["train.gradient.name=mezo", "train.optimizer=sgd", "train.lr=1e-3", "train.threads=1", "train.eval_every=0",
        "train.save_every=0", "train.tensorboard=false"]


def _weights(folder: Path) -> dict:
    return load_file(str(folder / "final" / "model.safetensors"))


@pytest.mark.parametrize("config", ["tiny-dpo", "tiny-hpt", "tiny-npo", "tiny-kd"])
def test_mezo_trains_each_kind_of_method(tmp_path, config):
    out = tmp_path / config
    train(load_config(str(ROOT / "configs" / f"{config}.yaml"), [*MEZO, "train.steps=2", "data.eval=null",
                                                                 f"output_dir={out}"]), progress=False)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    trained = [row for row in rows if "projected_gradient" in row]
    assert len(trained) == 2 and all(row["grad_norm"] > 0 for row in trained)
    import torch
    from unigrad.models import load_model
    initial, _ = load_model(load_config(str(ROOT / "configs" / f"{config}.yaml"), []).model.name)
    after = _weights(out)
    moved = max(float((after[k] - v).abs().max()) for k, v in initial.state_dict().items() if k in after)
    assert moved > 0


def test_zo_rank_trains_through_the_loop(tmp_path):
    out = tmp_path / "zo-rank"
    train(load_config(str(ROOT / "configs" / "tiny-dpo.yaml"),
                      [*MEZO, "train.gradient.name=zo-rank", "train.gradient.samples=4", "train.gradient.top=2",
                       "train.steps=2", "data.eval=null", f"output_dir={out}"]), progress=False)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert sum("best_query_objective" in row for row in rows) == 2


def test_mezo_sgd_holds_no_gradients_and_mezo_adam_uses_the_optimiser(tmp_path):
    from unigrad.train import optimise
    base = [*MEZO, "train.steps=1", "data.eval=null"]
    run = assemble(load_config(str(ROOT / "configs" / "tiny-dpo.yaml"), [*base, f"output_dir={tmp_path / 'sgd'}"]))
    optimise(run, run.experience(0), 0)
    assert all(p.grad is None for p in run.params) and not run.optimizer.state
    run = assemble(load_config(str(ROOT / "configs" / "tiny-dpo.yaml"),
                               [*base, "train.optimizer=adamw", f"output_dir={tmp_path / 'adam'}"]))
    optimise(run, run.experience(0), 0)
    assert len(run.optimizer.state) == len(run.params)            # Adam moments of the estimate


def test_mezo_run_resumes_to_the_uninterrupted_weights(tmp_path):
    def run(out, resume=False):
        train(load_config(str(ROOT / "configs" / "tiny-dpo.yaml"),
                          [*MEZO, "train.steps=4", "train.save_every=2", "train.gradient.samples=2", "data.eval=null",
                           f"output_dir={out}"]), resume=resume, progress=False)
    run(tmp_path / "straight")
    (tmp_path / "resumed" / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "straight" / "checkpoints" / "step-000002",
                    tmp_path / "resumed" / "checkpoints" / "step-000002")
    run(tmp_path / "resumed", resume=True)
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6


@pytest.mark.parametrize("override, message", [("train.gradient.samples=0", "at least 1"),
                                               ("train.gradient.eps=0", "must be > 0"),
                                               ("train.optimizer_in_backward=true", "replicated"),
                                               ("train.gradient.name=zo-rank", "at least 2"),
                                               ("train.gradient.top=3", "1 ≤ k ≤ samples")])
def test_mezo_settings_refused_with_the_reason(tmp_path, override, message):
    config = load_config(str(ROOT / "configs" / "tiny-dpo.yaml"),
                         [*MEZO, override, "train.max_grad_norm=null", f"output_dir={tmp_path}"])
    with pytest.raises(ConfigError, match=message):
        assemble(config)


def test_mezo_with_lora_perturbs_and_moves_only_the_adapters(tmp_path):
    import torch
    from unigrad.train import optimise
    run = assemble(load_config(str(ROOT / "configs" / "tiny-dpo.yaml"),
                               [*MEZO, "train.steps=1", "data.eval=null", "model.lora={r: 4, alpha: 8}",
                                f"output_dir={tmp_path}"]))
    frozen = {name: p.detach().clone() for name, p in run.model.named_parameters() if not p.requires_grad}
    adapters = {name: p.detach().clone() for name, p in run.model.named_parameters() if p.requires_grad}
    assert frozen and adapters and all("lora" in name for name in adapters)
    optimise(run, run.experience(0), 0)
    now = dict(run.model.named_parameters())
    assert all(torch.equal(now[name], value) for name, value in frozen.items())
    assert any(not torch.equal(now[name], value) for name, value in adapters.items())
