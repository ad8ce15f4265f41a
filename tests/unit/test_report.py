"""The run report: a synthetic metrics.jsonl → one PNG per family with data, and an index.html using them."""
from __future__ import annotations

import json
import math

from unigrad.report import group_metrics, metric_series, read_metrics, write_report


def _write_run(folder, with_rl=True):
    rows = [{"step": 0, "eval/objective": 0.69, "eval/reward_margin": 0.0}]
    for step in range(1, 11):
        row = {"step": step, "objective": 0.7 - 0.02 * step, "surrogate": 0.7 - 0.02 * step,
               "lr": 1e-5 * min(1.0, step / 2), "grad_norm": 1.0 / step, "tokens_per_s": 900.0 + step}
        if with_rl:
            row.update({"reward_mean": 0.1 * step, "kl": 0.01 * step, "sft_fraction": 0.5 / step})
            if step % 5 == 0:
                row["eval/accuracy"] = 0.05 * step
        if step % 5 == 0:
            row.update({"eval/objective": 0.69 - 0.01 * step, "eval/reward_margin": 0.02 * step})
        rows.append(row)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "{not json\n")
    (folder / "config.json").write_text(json.dumps({"model": {"name": "tiny-random"}, "method": {"name": "dpo", "beta": 0.1},
                                                    "train": {"steps": 10, "lr": 1e-5}, "output_dir": str(folder)}))
    (folder / "summary.json").write_text(json.dumps({"steps": 10, "final_model": str(folder / "final"), "objective": 0.5}))
    return rows


def test_report_writes_a_png_per_family_and_an_index(tmp_path):
    _write_run(tmp_path)
    index = write_report(tmp_path)
    assert index == tmp_path / "report" / "index.html"
    pngs = {p.name for p in (tmp_path / "report").glob("*.png")}
    assert pngs == {"objective.png", "reward.png", "accuracy.png", "kl.png", "gate.png", "reward_margin.png",
                    "lr.png", "throughput.png", "other.png"}
    for name in pngs:
        assert (tmp_path / "report" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = index.read_text()
    for name in pngs:
        assert f"src='{name}'" in page
    assert "tiny-random" in page and "dpo" in page                       # run info from config.json
    assert "eval/accuracy" in page and "0.05" in page and "0.5" in page  # first / last of eval/accuracy


def test_families_without_data_are_skipped(tmp_path):
    _write_run(tmp_path, with_rl=False)
    index = write_report(tmp_path, out_dir=tmp_path / "elsewhere")
    pngs = {p.name for p in index.parent.glob("*.png")}
    assert pngs == {"objective.png", "reward_margin.png", "lr.png", "throughput.png", "other.png"}
    page = index.read_text()
    assert "kl.png" not in page and "accuracy.png" not in page and "gate.png" not in page


def test_metric_grouping_and_series(tmp_path):
    rows = _write_run(tmp_path)
    read = read_metrics(tmp_path / "metrics.jsonl")
    assert len(read) == len(rows)                                         # the broken line is skipped
    series = metric_series(read)
    assert series["eval/accuracy"] == [(5, 0.25), (10, 0.5)]
    groups = {f.slug: keys for f, keys in group_metrics(series).items()}
    assert groups["reward_margin"] == ["eval/reward_margin"]
    assert set(groups["objective"]) == {"eval/objective", "objective", "surrogate"}
    assert groups["kl"] == ["kl"] and groups["gate"] == ["sft_fraction"] and groups["reward"] == ["reward_mean"]
    assert groups["other"] == ["grad_norm"]
    assert {f.slug for f, _ in group_metrics(["reward/failed", "eval/kl", "pass@4", "lookup", "surrogate", "gate/sft"]).items()} \
        == {"other", "kl", "accuracy", "objective", "gate"}
    assert not math.isnan(series["lr"][0][1])


def test_report_includes_eval_json(tmp_path):
    _write_run(tmp_path)
    (tmp_path / "eval.json").write_text(json.dumps({
        "accuracy": 0.16, "pass@4": 0.4, "settings": {"k": [4]},
        "records": [{"prompt": "What is 1 + 1?", "answer": "2", "completion": "<b>2</b>", "reward": 1.0}]}))
    page = write_report(tmp_path).read_text()
    assert "pass@4" in page and "What is 1 + 1?" in page and "&lt;b&gt;2&lt;/b&gt;" in page
