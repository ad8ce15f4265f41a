"""`method: reward-model` through the one loop: the tiny model trained as a Bradley–Terry reward model on
the shipped pairs, saved where AutoModelForSequenceClassification loads it, scored the same way by
RewardModel, `unigrad eval` and the training run's held-out metrics, used as an online run's
reward.function and as a Bradley–Terry preference; it resumes exactly; wrong settings are refused."""
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from unigrad.config import ConfigError, load_config
from unigrad.train import train

ROOT = Path(__file__).resolve().parents[2]
TINY_RM = """
model: tiny-random
method: {name: reward-model, margin: 0.1}
data: {train: data/pairs/train.jsonl, eval: data/pairs/eval.jsonl, format: pairs, max_length: 256}
train: {steps: 4, batch_size: 4, lr: 1.0e-3, save_every: 2, tensorboard: false, threads: 1}
"""


def _config(out, *overrides):
    return load_config(None, [f"output_dir={out}", *overrides], text=TINY_RM)


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("rm") / "run"
    summary = train(_config(out), progress=False)
    return out, summary


def test_trained_reward_model_loads_with_transformers_and_scores_as_trained(trained):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from unigrad.evaluate import evaluate_pairs
    from unigrad.rewards import RewardModel
    out, summary = trained
    final = out / "final"
    assert (final / "model.safetensors").is_file() and not list(final.glob("*.bin"))
    model = AutoModelForSequenceClassification.from_pretrained(final)
    tokenizer = AutoTokenizer.from_pretrained(final)
    assert model.config.num_labels == 1 and model.config.pad_token_id == tokenizer.pad_token_id
    rm = RewardModel(final)
    ids = rm.ids("What is 2 plus 2?", "2 plus 2 equals 4.")
    with torch.no_grad():
        direct = model(input_ids=torch.tensor([ids])).logits[0, 0]
    torch.testing.assert_close(rm.score(["What is 2 plus 2?"], ["2 plus 2 equals 4."])[0], direct, atol=1e-5, rtol=0)
    rows = _rows(out)
    before, after = rows[0], rows[-1]
    assert "eval/pair_accuracy" in before and "eval/pair_accuracy" in after and after["objective"] > 0
    result = evaluate_pairs(rm, str(ROOT / "data/pairs/eval.jsonl"), max_length=256)
    assert result["num_pairs"] == 40
    assert abs(result["pair_accuracy"] - after["eval/pair_accuracy"]) < 1e-9          # the same scores
    assert abs(result["margin_mean"] - after["eval/score_margin"]) < 1e-5
    assert summary["before/eval/pair_accuracy"] == before["eval/pair_accuracy"]


def test_unigrad_eval_reports_pair_accuracy_of_a_reward_model_run(trained, tmp_path):
    import subprocess
    import sys
    out, _ = trained
    report = tmp_path / "eval.json"
    done = subprocess.run([sys.executable, "-m", "unigrad", "eval", "--model", str(out), "--out", str(report)],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "pair accuracy" in done.stdout
    result = json.loads(report.read_text())
    assert result["num_pairs"] == 40 and abs(result["pair_accuracy"] - _rows(out)[-1]["eval/pair_accuracy"]) < 1e-9


def test_reward_model_folder_is_an_online_runs_reward_and_a_bradley_terry_preference(trained, tmp_path):
    from unigrad.rewards import RewardModel, load_reward
    from unigrad.rewards.bradley_terry import BradleyTerry
    final = trained[0] / "final"
    reward = load_reward(str(final))
    assert isinstance(reward, RewardModel)
    prefer = BradleyTerry(reward)
    prompts, a, b = ["What is 3 plus 4?"] * 2, ["3 plus 4 equals 7.", "no"], ["Look it up.", "no"]
    p = prefer.prefer(prompts, a, b)
    r_a, r_b = reward.score(prompts, a).double(), reward.score(prompts, b).double()
    torch.testing.assert_close(p, torch.sigmoid(r_a - r_b))
    torch.testing.assert_close(p + prefer(prompts, b, a), torch.ones(2, dtype=torch.float64))
    assert float(p[1]) == 0.5
    out = tmp_path / "online"
    summary = train(load_config(str(ROOT / "configs" / "tiny-hpt.yaml"),
                                [f"reward.function={final}", "train.steps=1", "train.threads=1",
                                 f"output_dir={out}"]), progress=False)
    rows = [r for r in _rows(out) if "reward_mean" in r]
    assert rows and all(r["reward_mean"] == r["reward_mean"] for r in rows)             # real, finite scores
    assert summary["steps"] == 1


def test_reward_model_run_resumes_to_the_uninterrupted_weights(trained, tmp_path):
    straight = trained[0]
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(straight / "checkpoints" / "step-000002", resumed / "checkpoints" / "step-000002")
    train(_config(resumed), resume=True, progress=False)
    a, b = load_file(str(straight / "final" / "model.safetensors")), load_file(str(resumed / "final" / "model.safetensors"))
    assert a.keys() == b.keys() and "score.weight" in a
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6


@pytest.mark.parametrize("overrides, message", [
    (["data.format=sft"], "data.format='sft': reward-model fits a Bradley–Terry score"),
    (["train.track_kl=true"], "train.track_kl: not with reward-model"),
    (["data.on_policy_fraction=0.5"], "data.on_policy_fraction: not with reward-model"),
])
def test_reward_model_settings_refused_with_the_reason(tmp_path, overrides, message):
    from unigrad.run import assemble
    with pytest.raises(ConfigError, match=message):
        assemble(_config(tmp_path / "x", *overrides))


def test_a_reward_model_folder_is_refused_as_a_policy(trained):
    from unigrad.models import ModelError, load_model
    with pytest.raises(ModelError, match="sequence-classification \\(reward\\) model, not a causal LM"):
        load_model(str(trained[0] / "final"))
