"""`train.gradient.name=es` with the reward oracle, and `zo-rank` with the preference oracle, train an
online run end to end on the tiny model: the perturbed policies' greedy completions of the step's
prompts are scored by a non-differentiable reward, and the weights move."""
import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from unigrad.config import load_config
from unigrad.train import train

ROOT = Path(__file__).resolve().parents[2]
# A black-box score of the text: any change of a greedy token changes it (the tiny model's completions
# are noise, so a task reward would be 0 everywhere).
SCORE = "def score(prompt, completion, answer, **meta):\n    return (sum(map(ord, completion)) % 97) / 97\n"


def _run(tmp_path, gradient):
    (tmp_path / "score.py").write_text(SCORE)
    out = tmp_path / "run"
    train(load_config(str(ROOT / "configs" / "tiny-hpt.yaml"),
                      ["method={name: grpo}", f"reward.function={tmp_path / 'score.py'}:score", "train.optimizer=sgd",
                       "train.lr=1e-2", "train.steps=2", "train.threads=1", "train.eval_every=0", "train.save_every=0",
                       "train.track_kl=false", "rollout.num_generations=2", "rollout.max_new_tokens=6",
                       "train.gradient.eps=1e-2", *gradient, f"output_dir={out}"]), progress=False)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    from unigrad.models import load_model
    initial, _ = load_model("tiny-random")
    after = load_file(str(out / "final" / "model.safetensors"))
    moved = max(float((after[k] - v).abs().max()) for k, v in initial.state_dict().items() if k in after)
    return [row for row in rows if "grad_norm" in row], moved


def test_es_with_the_reward_oracle_trains_an_online_run(tmp_path):
    trained, moved = _run(tmp_path, ["train.gradient.name=es", "train.gradient.samples=2", "train.gradient.oracle=reward",
                                     "train.gradient.shaping=centered-ranks"])
    assert len(trained) == 2 and all(0 <= row["oracle_reward_mean"] <= 1 for row in trained)
    assert any(row["es_value_spread"] > 0 for row in trained)     # the perturbations changed the completions
    assert all(row["grad_norm"] > 0 for row in trained) and moved > 0


def test_zo_rank_with_the_preference_oracle_trains_an_online_run(tmp_path):
    trained, moved = _run(tmp_path, ["train.gradient.name=zo-rank", "train.gradient.samples=3", "train.gradient.top=2",
                                     "train.gradient.oracle=preference"])
    assert len(trained) == 2 and all("best_query_objective" in row for row in trained) and moved > 0
