"""The run report: a synthetic metrics.jsonl → the outcome first (held-out before → after), then the
training curves (noisy ones smoothed over their raw points), the internals collapsed; several runs
overlaid on one page; ``unigrad report`` with one run folder or several."""
from __future__ import annotations

import json
import math
import random

import pytest

from unigrad.config import ConfigError
from unigrad.report import (group_metrics, load_run, metric_series, read_metrics, smooth, smoothing_window,
                            write_comparison, write_report)
from unigrad.report import _draw, _overlay  # the plotting of one series and of several runs


def _write_run(folder, with_rl=True, steps=10, gain=1.0, seed=0):
    rng = random.Random(seed)
    rows = [{"step": 0, "eval/objective": 0.69, "eval/reward_margin": 0.0, **({"eval/accuracy": 0.1} if with_rl else {})}]
    for step in range(1, steps + 1):
        row = {"step": step, "objective": 0.7 - 0.02 * step + 0.01 * rng.random(), "surrogate": -1.0,
               "lr": 1e-5 * min(1.0, step / 2), "grad_norm": 1.0 / step, "tokens_per_s": 900.0 + step}
        if with_rl:
            row.update({"reward_mean": gain * 0.1 * step, "kl": 0.01 * step, "sft_fraction": 0.5 / step})
            if step % 5 == 0:
                row["eval/accuracy"] = gain * 0.05 * step
        if step % 5 == 0:
            row.update({"eval/objective": 0.69 - 0.01 * step, "eval/reward_margin": 0.02 * step})
        rows.append(row)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "{not json\n")
    (folder / "config.json").write_text(json.dumps({"model": {"name": "tiny-random"}, "method": {"name": "dpo", "beta": 0.1},
                                                    "train": {"steps": steps, "lr": 1e-5}, "output_dir": str(folder)}))
    (folder / "summary.json").write_text(json.dumps({"steps": steps, "final_model": str(folder / "final"), "objective": 0.5}))
    return rows


def _write_small_run(folder, gain=1.0):
    """Two families only (objective, accuracy): for the tests of what is not the plots."""
    rows = [{"step": 0, "eval/accuracy": 0.1}, {"step": 1, "objective": 1.0},
            {"step": 2, "objective": 0.5, "eval/accuracy": 0.1 + 0.1 * gain}]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _details(page):
    start = page.index("<details id='internals'>")
    return start, page.index("</details>", start)


def test_report_writes_a_png_per_family_and_an_index(tmp_path):
    _write_run(tmp_path)
    index = write_report(tmp_path)
    assert index == tmp_path / "report" / "index.html"
    pngs = {p.name for p in (tmp_path / "report").glob("*.png")}
    assert pngs == {"outcome.png", "objective.png", "surrogate.png", "reward.png", "accuracy.png", "kl.png", "gate.png",
                    "reward_margin.png", "lr.png", "throughput.png", "other.png"}
    for name in pngs:
        assert (tmp_path / "report" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = index.read_text()
    for name in pngs:
        assert f"src='{name}'" in page
    assert "tiny-random" in page and "dpo" in page                       # run info from config.json


def test_the_outcome_leads_and_the_internals_are_collapsed(tmp_path):
    _write_run(tmp_path, steps=40)
    page = write_report(tmp_path).read_text()
    outcome, training = page.index("<h2>Outcome</h2>"), page.index("<h2>Training</h2>")
    start, end = _details(page)
    assert outcome < page.index("src='outcome.png'") < training < start
    # the headline: eval/accuracy (first of the priority list) from its first to its last value
    assert "held-out <b>eval/accuracy</b>: 0.1 → 2 (+1.9, step 0 → 40)" in page[outcome:training]
    for family in ("reward", "kl", "throughput", "gate", "objective"):
        assert training < page.index(f"src='{family}.png'") < start
    for internal in ("surrogate.png", "lr.png", "other.png", "meaningless by design", "<h3>All metrics</h3>"):
        assert start < page.index(internal) < end, internal
    assert "surrogate" not in page[:start] and "open" not in page[start:start + 40]   # collapsed, not opened
    assert "centred moving average over 5 logged points" in page          # the caption states the smoothing


def test_the_headline_falls_back_to_the_run_s_held_out_metric(tmp_path):
    _write_run(tmp_path, with_rl=False)                                   # no eval/accuracy, no eval/reward_mean
    index = write_report(tmp_path, out_dir=tmp_path / "elsewhere")
    page = index.read_text()
    assert "held-out <b>eval/objective</b>: 0.69 → 0.59" in page
    assert page.index("eval/objective") < page.index("eval/reward_margin") < page.index("<h2>Training</h2>")
    pngs = {p.name for p in index.parent.glob("*.png")}
    assert "kl.png" not in pngs and "accuracy.png" not in pngs and "gate.png" not in pngs


def test_smoothing_is_a_centred_moving_average():
    assert smooth([0.0, 0.0, 3.0, 0.0, 0.0], 3) == [0.0, 1.0, 1.0, 1.0, 0.0]
    assert smooth([1.0, 2.0, 3.0], 3) == [1.5, 2.0, 2.5]                  # the window shrinks at the ends
    assert smooth([1.0, math.nan, 3.0], 3) == [1.0, 2.0, 3.0]             # non-finite values are skipped
    assert smooth([4.0, 1.0], 1) == [4.0, 1.0]
    noisy = [(-1.0) ** i + 0.01 * i for i in range(100)]
    smoothed = smooth(noisy, smoothing_window(len(noisy)))
    off = lambda values: max(abs(v - 0.01 * i) for i, v in enumerate(values[10:-10], 10))   # from the trend
    assert off(smoothed) < 0.1 and off(noisy) == pytest.approx(1.0)
    assert [smoothing_window(n) for n in (5, 9, 10, 39, 40, 200)] == [1, 1, 3, 3, 5, 21]
    with pytest.raises(ValueError):
        smooth([1.0], 0)


def test_noisy_series_are_drawn_raw_under_their_smoothed_line():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots()
    points = [(s, float(s % 2)) for s in range(40)]
    assert _draw(ax, "reward_mean", points, "C0", "reward_mean", True) == 5
    raw, line = ax.lines
    assert raw.get_alpha() < 0.5 and line.get_alpha() is None and list(line.get_ydata()[5:8]) == pytest.approx([0.6, 0.4, 0.6])
    assert _draw(ax, "eval/accuracy", points, "C1", "eval/accuracy", True) == 1   # held-out: markers, unsmoothed
    assert ax.lines[-1].get_marker() == "o" and list(ax.lines[-1].get_ydata()) == [v for _, v in points]
    assert _draw(ax, "lr", points, "C2", "lr", False) == 1 and len(ax.lines) == 4
    plt.close(fig)


def test_metric_grouping_and_series(tmp_path):
    rows = _write_run(tmp_path)
    read = read_metrics(tmp_path / "metrics.jsonl")
    assert len(read) == len(rows)                                         # the broken line is skipped
    series = metric_series(read)
    assert series["eval/accuracy"] == [(0, 0.1), (5, 0.25), (10, 0.5)]
    groups = {f.slug: keys for f, keys in group_metrics(series).items()}
    assert groups["reward_margin"] == ["eval/reward_margin"]
    assert set(groups["objective"]) == {"eval/objective", "objective"} and groups["surrogate"] == ["surrogate"]
    assert groups["kl"] == ["kl"] and groups["gate"] == ["sft_fraction"] and groups["reward"] == ["reward_mean"]
    assert groups["other"] == ["grad_norm"]
    assert {f.slug for f, _ in group_metrics(["reward/failed", "eval/kl", "pass@4", "lookup", "surrogate", "gate/sft",
                                              "eval/reward_fallbacks"]).items()} \
        == {"other", "kl", "accuracy", "surrogate", "gate"}
    assert [f.slug for f in group_metrics(["lr", "surrogate", "kl", "objective", "reward_mean"])] \
        == ["reward", "objective", "kl", "surrogate", "lr"]               # the internals last
    assert not math.isnan(series["lr"][0][1])


def test_report_includes_eval_json(tmp_path):
    _write_small_run(tmp_path)
    (tmp_path / "eval.json").write_text(json.dumps({
        "accuracy": 0.16, "pass@4": 0.4, "settings": {"k": [4]},
        "records": [{"prompt": "What is 1 + 1?", "answer": "2", "completion": "<b>2</b>", "reward": 1.0}]}))
    page = write_report(tmp_path).read_text()
    assert "final model (eval.json): <b>accuracy</b> 0.16 · <b>pass@4</b> 0.4" not in page   # it has eval/ metrics
    assert "pass@4" in page and "What is 1 + 1?" in page and "&lt;b&gt;2&lt;/b&gt;" in page
    assert page.index("Evaluation (eval.json)") < page.index("<h2>Training</h2>")
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "objective": 1.0}) + "\n")   # no eval/ metrics
    page = write_report(tmp_path).read_text()
    assert "final model (eval.json): <b>accuracy</b> 0.16 · <b>pass@4</b> 0.4" in page      # the headline then


def test_missing_folders_and_empty_metrics(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere: no such run folder"):
        write_report(tmp_path / "nowhere")
    (tmp_path / "bare").mkdir()
    with pytest.raises(FileNotFoundError, match="bare: no metrics.jsonl"):
        write_report(tmp_path / "bare")
    (tmp_path / "bare" / "metrics.jsonl").write_text("")
    page = write_report(tmp_path / "bare").read_text()
    assert "holds no metrics yet" in page and "No held-out metrics" in page
    _write_small_run(tmp_path / "full")
    page = write_comparison([tmp_path / "full", tmp_path / "bare"], tmp_path / "cmp").read_text()
    assert "No metrics yet in: bare" in page
    with pytest.raises(FileNotFoundError, match="nowhere"):
        write_comparison([tmp_path / "full", tmp_path / "nowhere"], tmp_path / "cmp")


def test_the_comparison_overlays_the_runs(tmp_path):
    _write_run(tmp_path / "a", gain=1.0, seed=1)
    _write_run(tmp_path / "b", gain=0.5, seed=2)
    index = write_comparison([tmp_path / "a", tmp_path / "b"], tmp_path / "cmp", labels=["sft only", "hpt"])
    assert index == tmp_path / "cmp" / "index.html"
    page = index.read_text()
    table, training = page.index("<table>"), page.index("<h2>Training</h2>")
    start, end = _details(page)
    assert page.index("<h2>Outcome</h2>") < table < training < start
    head = page[table:training]
    assert "sft only" in head and "hpt" in head                         # each run's held-out metrics before → after
    assert "0.1 → 0.5 (+0.4, step 0 → 10)" in head and "0.1 → 0.25 (+0.15, step 0 → 10)" in head
    assert start < page.index("src='surrogate.png'") < end and "meaningless by design" in page[start:end]
    for name in ("outcome.png", "reward.png", "accuracy.png", "objective.png", "kl.png", "gate.png", "other.png"):
        assert (tmp_path / "cmp" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    runs = [load_run(tmp_path / "a", "sft only"), load_run(tmp_path / "b", "hpt")]
    runs[1].colour = "C1"
    panels = _overlay(runs, ["reward_mean", "eval/accuracy"], 9)
    assert [(c, label) for _, _, c, label in panels["accuracy"]] == [("C0", "sft only (held-out)"), ("C1", "hpt (held-out)")]
    assert [(c, label) for _, _, c, label in panels["reward_mean"]] == [("C0", "sft only"), ("C1", "hpt")]


def test_comparison_labels_default_to_the_folders(tmp_path):
    for folder in ("x/run", "y/run"):
        _write_small_run(tmp_path / folder)
    page = write_comparison([tmp_path / "x/run", tmp_path / "y/run"], tmp_path / "cmp").read_text()
    assert "x/run" in page and "y/run" in page                            # same name: told apart by the parent
    (tmp_path / "x/run/eval.json").write_text(json.dumps({"seed": 0, "accuracy": 0.375, "pass@4": 0.5, "records": []}))
    page = write_comparison([tmp_path / "x/run", tmp_path / "y/run"], tmp_path / "cmp").read_text()
    head = page[:page.index("<h2>Training</h2>")]
    assert "<th>accuracy (eval.json)</th><th>pass@4 (eval.json)</th></tr>" in head and "<td>0.375</td>" in head
    assert "seed" not in head
    with pytest.raises(ConfigError, match="1 labels for 2 runs"):
        write_comparison([tmp_path / "x/run", tmp_path / "y/run"], tmp_path / "cmp", labels=["one"])


def test_the_cli_reports_one_run_or_compares_several(tmp_path, capsys):
    from unigrad.cli import main
    _write_small_run(tmp_path / "a")
    _write_small_run(tmp_path / "b", gain=2.0)
    assert main(["report", str(tmp_path / "a"), str(tmp_path / "b"), "--labels", "first", "second"]) == 0
    index = tmp_path / "report-compare" / "index.html"
    assert capsys.readouterr().out.strip() == str(index)
    page = index.read_text()
    assert "first" in page and "second" in page and (tmp_path / "report-compare" / "outcome.png").is_file()
    assert main(["report", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "mine")]) == 0
    assert (tmp_path / "mine" / "index.html").is_file()
    assert main(["report", str(tmp_path / "a")]) == 0 and (tmp_path / "a" / "report" / "index.html").is_file()
    capsys.readouterr()
    assert main(["report", str(tmp_path / "a"), str(tmp_path / "gone")]) == 2
    assert "gone: no such run folder" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "a"), "--labels", "x"]) == 2
