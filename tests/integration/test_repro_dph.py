"""`unigrad repro dph-rl --tiny` end to end (its numbers mean nothing at this scale: the pipeline — SFT warm
start, the shared rehearsal set, three arms, pass@k, the verdict, the page — must run), and its verdict rule on
made-up numbers."""
import json

from unigrad.cli import main
from unigrad.repro import NOT_REPRODUCED, PARTLY, REPRODUCED, VERDICTS
from unigrad.repro import dph


def test_dph_rl_tiny_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setattr("unigrad.report.write_report", lambda folder: folder)   # the runs' HTML reports are not under test
    assert main(["repro", "dph-rl", "--tiny", "--out", str(tmp_path), "--no-progress"]) == 0
    folder = tmp_path / "dph-rl"
    result = json.loads((folder / "result.json").read_text())
    assert result["scale"] == "tiny" and result["verdict"] in VERDICTS
    assert all((folder / f).stat().st_size > 0 for f in result["figures"])
    assert set(result["numbers"]["per_arm"]) == set(dph.ARMS)
    assert (folder / "rehearsal" / "rehearsal.json").is_file()          # sampled once, shared by the DPH runs
    for arm in dph.ARMS:
        assert 0.0 <= result["numbers"]["per_arm"][arm][0]["pass@4"] <= 1.0


def _runs(pass1, pass8):
    return [{"pass@1": a, "pass@8": b} for a, b in zip(pass1, pass8)]


def test_dph_rl_verdict_rule():
    grpo = _runs([0.5, 0.5], [0.70, 0.72])
    arms = lambda js, fkl: {"grpo": grpo, "dph-js": js, "dph-forward-kl": fkl}   # noqa: E731
    worse = _runs([0.5, 0.5], [0.60, 0.62])
    assert dph.judge(arms(_runs([0.49, 0.51], [0.80, 0.81]), worse))[0] == REPRODUCED
    assert dph.judge(arms(_runs([0.49, 0.51], [0.80, 0.69]), worse))[0] == PARTLY         # not in every seed
    assert dph.judge(arms(_runs([0.30, 0.30], [0.80, 0.81]), worse))[0] == PARTLY         # pass@1 not similar
    assert dph.judge(arms(worse, worse))[0] == NOT_REPRODUCED
    assert dph.judge(arms(_runs([0.5], [0.8]), _runs([0.5], [0.6])) | {"grpo": grpo[:1]})[0] == PARTLY   # one seed
