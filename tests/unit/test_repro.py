"""The reproduction suite's framework: scales, the HPT verdict rule on made-up numbers, pages."""
import json

import pytest

from unigrad.repro import NOT_REPRODUCED, PARTLY, REPRODUCED, VERDICTS, Claim, Outcome, Reproduction, Scale, get, names
from unigrad.repro.base import spread
from unigrad.repro.hpt import judge
from unigrad.repro.runner import listing, page, results_page, run_one, write_index


def arms(hpt, sft, grpo=(0.1, 0.1, 0.1), transfer_gap=0.0, pass_gap=0.0):
    def runs(values, extra=0.0):
        return [{"accuracy": v, "transfer_accuracy": v + extra, "pass@8": v + extra} for v in values]
    out = {"sft": runs(sft), "grpo": runs(grpo), "sft-then-grpo": runs([0.0] * len(hpt)), "hpt": runs(hpt),
           "hpt-gamma-0.25": runs([0.0] * len(hpt))}
    for r in out["hpt"]:
        r["transfer_accuracy"] += transfer_gap
        r["pass@8"] += pass_gap
    return out


def test_scale_seeds_and_pick():
    assert Scale().seed_list(3) == [0, 1, 2]
    assert Scale(quick=True).seed_list(3) == [0]
    assert Scale(quick=True, seeds=2).seed_list(3) == [0, 1]
    assert Scale(tiny=True).pick(1, 2, 3) == 3 and Scale(quick=True).pick(1, 2, 3) == 2 and Scale().pick(1, 2, 3) == 1
    assert Scale(tiny=True, quick=True).name == "tiny"
    with pytest.raises(ValueError, match="--seeds"):
        Scale(seeds=0).seed_list(3)


def test_spread():
    assert spread([1.0]) == (1.0, 0.0)
    mean, sd = spread([1.0, 2.0, 3.0])
    assert mean == 2.0 and sd == pytest.approx(1.0)


def test_hpt_verdict_reproduced_when_best_in_every_seed_beyond_the_spread():
    verdict, reason, facts = judge(arms(hpt=[0.40, 0.42, 0.41], sft=[0.30, 0.31, 0.33]))
    assert verdict == REPRODUCED, reason
    assert facts["best_other"] == "sft" and facts["gap"] == pytest.approx(0.0967, abs=1e-3)


def test_hpt_verdict_partly_when_a_seed_loses_or_the_gap_is_within_the_spread():
    verdict, reason, _ = judge(arms(hpt=[0.40, 0.30, 0.50], sft=[0.35, 0.35, 0.35]))
    assert verdict == PARTLY and "every seed" in reason
    verdict, reason, _ = judge(arms(hpt=[0.40], sft=[0.30]))
    assert verdict == PARTLY and "one seed" in reason
    verdict, reason, _ = judge(arms(hpt=[0.40, 0.42, 0.41], sft=[0.30, 0.31, 0.33], transfer_gap=-0.3))
    assert verdict == PARTLY and "transfer" in reason


def test_hpt_verdict_not_reproduced_when_another_arm_is_as_good():
    verdict, reason, facts = judge(arms(hpt=[0.30, 0.30, 0.30], sft=[0.30, 0.31, 0.29], grpo=[0.1, 0.1, 0.1]))
    assert verdict == NOT_REPRODUCED and facts["best_other"] == "sft"
    assert "sft" in reason


def test_outcome_refuses_an_unknown_verdict():
    with pytest.raises(ValueError, match="verdict"):
        Outcome(ours="", verdict="sort of", reason="", numbers={})


def test_every_registered_reproduction_states_its_claim_and_rule():
    for name in names():
        repro = get(name)
        assert repro.name == name
        assert repro.claim.paper and repro.claim.statement and repro.claim.paper_number
        assert repro.verdict_rule and repro.setting and repro.measure
    with pytest.raises(ValueError, match="unknown reproduction"):
        get("no-such-claim")


def _fake(tmp_path):
    def run(folder, scale):
        return Outcome(ours="ours 0.5", verdict=PARTLY, reason="because", numbers={"x": 1.5, "scale": scale.name},
                       table=[{"arm": "a", "value": 0.5}])
    return Reproduction("fake", "A fake claim", Claim("Paper (2025)", "Table 9", "X beats Y", "0.9 vs 0.8"),
                        "tiny", "a number", "reproduced if 1 > 0", run)


def test_runner_writes_result_page_and_results_page(tmp_path, monkeypatch):
    repro = _fake(tmp_path)
    result = run_one(repro, tmp_path, Scale())
    saved = json.loads((tmp_path / "fake" / "result.json").read_text())
    assert saved["verdict"] == PARTLY and saved["verdict"] in VERDICTS and saved["scale"] == "full"
    assert saved["numbers"] == {"x": 1.5, "scale": "full"} and "torch" in saved["versions"]
    assert saved["wall_seconds"] >= 0 and saved["command"] == "unigrad repro fake"
    html = (tmp_path / "fake" / "index.html").read_text()
    assert "0.9 vs 0.8" in html and "ours 0.5" in html and "reproduced if 1 &gt; 0" in html
    assert page(result).count("<table>") >= 2
    from unigrad import repro as package
    monkeypatch.setitem(package.REGISTRY, "fake", "tests.unit.fake_repro")
    monkeypatch.setattr(package, "get", lambda name: repro if name == "fake" else get(name))
    monkeypatch.setattr("unigrad.repro.runner.get", package.get)
    monkeypatch.setattr("unigrad.repro.runner.names", lambda: ["fake"])
    assert "partly reproduced (full" in listing(tmp_path)
    assert "fake/index.html" in write_index(tmp_path).read_text()
    md = results_page(tmp_path, tmp_path / "REPRODUCTIONS.md").read_text()
    assert "| fake | X beats Y | 0.9 vs 0.8 | ours 0.5 | **partly reproduced** | `unigrad repro fake` |" in md
    run_one(repro, tmp_path, Scale(quick=True))          # a quick run is not quoted by the results page
    assert "not run at full scale" in results_page(tmp_path, tmp_path / "R.md").read_text()
