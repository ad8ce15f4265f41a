"""`unigrad repro hpt --tiny` end to end (a tiny random model: the numbers mean nothing, the
pipeline — five arms trained, evaluated, judged, plotted, paged — must run)."""
import json

from unigrad.cli import main
from unigrad.repro import VERDICTS
from unigrad.repro.hpt import ARMS


def test_repro_hpt_tiny_end_to_end(tmp_path, capsys):
    assert main(["repro", "hpt", "--tiny", "--out", str(tmp_path), "--no-progress"]) == 0
    result = json.loads((tmp_path / "hpt" / "result.json").read_text())
    assert result["verdict"] in VERDICTS and result["scale"] == "tiny"
    per_arm = result["numbers"]["per_arm"]
    assert set(per_arm) == set(ARMS) and all(len(runs) == 1 for runs in per_arm.values())
    for runs in per_arm.values():
        assert {"accuracy", "pass@1", "pass@4", "pass@8", "transfer_accuracy"} <= set(runs[0])
    budgets = result["numbers"]["budgets"]
    assert len({b["optimiser_steps"] for b in budgets.values()}) == 1          # equal optimiser steps
    assert budgets["sft"]["rollouts"] == 0 and budgets["grpo"]["rollouts"] == budgets["hpt"]["rollouts"] > 0
    assert budgets["sft-then-grpo"]["rollouts"] == budgets["grpo"]["rollouts"] // 2
    assert (tmp_path / "hpt" / "hpt_comparison.png").stat().st_size > 0
    assert "HPT beats SFT alone and RL alone" in (tmp_path / "hpt" / "index.html").read_text()
    assert (tmp_path / "index.html").is_file()
    out = capsys.readouterr().out
    assert "hpt: " in out and "index.html" in out
    assert main(["repro", "--list", "--out", str(tmp_path)]) == 0
    listed = capsys.readouterr().out
    assert "hpt: HPT beats SFT alone and RL alone" in listed and f"{result['verdict']} (tiny" in listed


def test_repro_refuses_unknown_names(tmp_path, capsys):
    assert main(["repro", "nope", "--tiny", "--out", str(tmp_path)]) == 2
    assert "unknown reproduction 'nope'" in capsys.readouterr().err
    assert main(["repro", "--out", str(tmp_path)]) == 2
