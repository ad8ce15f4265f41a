"""MDPO (several epochs per step against KL(π_θ‖π_k)/t_k) and COPO (answer-consistency blend) train an
online run end to end on the tiny model: the rollout producer fills ``train_step``/``train_steps`` and
``answer_id``, the methods' metrics are logged and finite, and the updates are not zero."""
import json
import math
from pathlib import Path

from unigrad.config import load_config
from unigrad.train import train

ROOT = Path(__file__).resolve().parents[2]
# The tiny model's completions are noise: a score of the text gives rollouts of one prompt different rewards.
SCORE = "def score(prompt, completion, answer, **meta):\n    return (sum(map(ord, completion)) % 7) / 7\n"


def _train(tmp_path, method: str) -> list[dict]:
    out = tmp_path / method
    train(load_config(str(ROOT / "configs" / "tiny-hpt.yaml"),
                      [f"method={{name: {method}}}", f"reward.function={tmp_path / 'score.py'}:score", "train.steps=2",
                       "train.threads=1", "train.eval_every=0", "train.save_every=0", "train.track_kl=false",
                       "data.task.eval_size=0", "rollout.num_generations=4", "rollout.max_new_tokens=6",
                       "rollout.epochs=2", "train.lr=1e-2", f"output_dir={out}"]), progress=False)
    return [row for row in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "grad_norm" in row]


def test_mdpo_and_copo_train_two_steps(tmp_path, monkeypatch):
    monkeypatch.setattr("unigrad.report.write_report", lambda folder: folder)   # the HTML report is not under test
    (tmp_path / "score.py").write_text(SCORE)
    for method, metrics in (("mdpo", ("mdpo/kl_old", "mdpo/inverse_step", "policy/objective")),
                            ("copo", ("local/answer_entropy", "local/local_weight", "global/global_reward"))):
        rows = _train(tmp_path, method)
        assert len(rows) == 2
        assert all(math.isfinite(row[key]) and row["grad_norm"] > 0 for row in rows for key in metrics), rows
        if method == "mdpo":   # t_k = 1 − (k−1)/K with K = train.steps = 2: 1/t_k = 1, then 2
            assert [row["mdpo/inverse_step"] for row in rows] == [1.0, 2.0]
            assert all(row["mdpo/kl_old"] >= 0 for row in rows)
