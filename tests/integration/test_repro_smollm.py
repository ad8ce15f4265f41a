"""The CHES and GA-vs-NPO reproductions end to end at tiny scale, through ``unigrad repro``: each
writes result.json with a verdict from VERDICTS, its numbers, its figures and its page."""
import json
import math

import pytest
import torch

from unigrad.cli import main
from unigrad.repro import VERDICTS


def _repro(name, tmp_path):
    torch.set_num_threads(1)
    assert main(["repro", name, "--tiny", "--out", str(tmp_path), "--no-progress"]) == 0
    folder = tmp_path / name
    result = json.loads((folder / "result.json").read_text())
    assert result["name"] == name and result["scale"] == "tiny" and result["verdict"] in VERDICTS
    assert result["reason"] and result["ours"] and result["table"]
    assert (folder / "index.html").is_file() and result["verdict"] in (folder / "index.html").read_text()
    assert result["figures"] and all((folder / f).stat().st_size > 0 for f in result["figures"])
    return result


def test_ches_reproduction_runs_end_to_end(tmp_path):
    result = _repro("ches", tmp_path)
    numbers = result["numbers"]
    assert len(numbers["ches"]) == len(numbers["ln_ches"]) == numbers["setting"]["pairs"]
    for protocol in ("per_pair", "joint"):
        r = numbers[protocol]
        assert len(r["drop"]) > 2 and all(math.isfinite(d) for d in r["drop"])
        for score in ("ches", "ln_ches"):
            assert -1.0 <= r[f"{score}/spearman"] <= 1.0 and 0.0 < r[f"{score}/p"] <= 1.0
    # the joint run moved the model: some chosen log-likelihood changed
    assert any(abs(d) > 1e-6 for d in numbers["joint"]["drop"])


def test_npo_vs_ga_reproduction_runs_end_to_end(tmp_path):
    result = _repro("npo-vs-ga", tmp_path)
    numbers = result["numbers"]
    assert set(numbers["measures"]) == {f"{axis}, β={beta}" for axis in ("mean", "median", "min") for beta in ("0.1", "1")}
    assert all(m["compared"] > 0 for m in numbers["measures"].values())
    for run in numbers["runs"]:
        ga, npo = run["trajectories"]["GA"], run["trajectories"]["NPO"]
        assert len(ga) == len(npo) == run["steps"] + 1
        assert ga[-1]["forget"] > ga[0]["forget"] and npo[-1]["forget"] > npo[0]["forget"]   # both forget
        assert run["at_retain_only_forget_nll"]["forget"] > 0
    # GA's trajectory is shared: the shorter β's is the start of the longer's
    short, long = sorted(numbers["runs"], key=lambda r: r["steps"])
    assert short["trajectories"]["GA"] == long["trajectories"]["GA"][: short["steps"] + 1]
