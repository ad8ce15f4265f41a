"""PPO's value head on the policy's trunk (``critic.shared``, with the KL in the reward and the critic
scored on held-out rollouts) through the one loop on the tiny model: it trains, its state is checkpointed
and a resumed run ends at the uninterrupted run's weights, head included; the final model is the plain
causal LM. And ``critic.pretrain_steps``: the separate critic
learns while the policy is held."""
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file

from unigrad.config import load_config
from unigrad.models import load_model
from unigrad.train import train

ROOT = Path(__file__).resolve().parents[2]
CONFIG = str(ROOT / "configs" / "tiny-ppo.yaml")
QUIET = ["train.eval_every=0", "data.task.eval_size=0", "train.tensorboard=false"]


def _run(folder: Path, *overrides: str, resume: bool = False) -> dict:
    torch.set_num_threads(1)
    return train(load_config(CONFIG, [*QUIET, *overrides, f"output_dir={folder}"]), resume=resume, progress=False)


def _rows(folder: Path) -> list[dict]:
    return [row for row in map(json.loads, (folder / "metrics.jsonl").read_text().splitlines()) if "objective" in row]


def _gap(a: dict, b: dict) -> float:
    assert sorted(a) == sorted(b)
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def test_a_shared_value_head_trains_and_resumes_exactly(tmp_path):
    shared = ["critic.shared=true", "critic.lr=1.0e-2", "method.kl_coef=0.05", "train.steps=3", "train.save_every=1",
              "train.keep_checkpoints=5", "data.task.eval_size=2", "train.eval_every=2"]
    _run(tmp_path / "straight", *shared)
    rows = _rows(tmp_path / "straight")
    assert len(rows) == 3 and all(row["value_loss"] > 0 and row["critic_grad_norm"] > 0 for row in rows)
    assert all("reward_kl" in row for row in rows)                          # the KL is in the reward
    assert [step for step, row in enumerate(rows, 1) if "eval/value_loss" in row] == [2, 3]   # the critic held out
    final = load_file(str(tmp_path / "straight" / "final" / "model.safetensors"))
    assert not any("value" in name or "score" in name for name in final)     # the head is not in the LM
    heads = [load_file(str(tmp_path / "straight" / "checkpoints" / f"step-00000{k}" / "states.safetensors"))
             for k in (1, 2)]
    assert {"critic/weights/weight", "critic/weights/bias", "critic/optimizer/0/exp_avg"} <= set(heads[0])
    assert heads[0]["critic/weights/weight"].shape == (1, 64)
    assert _gap({"w": heads[0]["critic/weights/weight"]}, {"w": heads[1]["critic/weights/weight"]}) > 0   # it learns

    resumed = tmp_path / "resumed"   # as if stopped right after the step-1 checkpoint
    shutil.copytree(tmp_path / "straight", resumed)
    shutil.rmtree(resumed / "final")
    shutil.rmtree(resumed / "checkpoints" / "step-000002")
    _run(resumed, *shared, resume=True)
    assert _gap(final, load_file(str(resumed / "final" / "model.safetensors"))) <= 1e-6
    again = load_file(str(resumed / "checkpoints" / "step-000002" / "states.safetensors"))
    assert _gap(heads[1], again) <= 1e-6


def test_critic_pretraining_holds_the_policy(tmp_path):
    _run(tmp_path, "critic.pretrain_steps=1", "train.steps=2", "train.save_every=1")
    rows = _rows(tmp_path)
    assert [row["policy_held"] for row in rows] == [1.0, 0.0]
    assert rows[0]["value_loss"] > 0 and rows[0]["critic_grad_norm"] > 0
    initial, _ = load_model("tiny-random")
    held = load_file(str(tmp_path / "checkpoints" / "step-000001" / "model" / "model.safetensors"))
    start = {name: p.detach() for name, p in initial.named_parameters() if name in held}
    assert _gap(start, {name: held[name] for name in start}) == 0.0          # step 1 did not move the policy
    trained = load_file(str(tmp_path / "final" / "model.safetensors"))
    assert _gap(start, {name: trained[name] for name in start}) > 0            # step 2 did
