"""The PES / ES-Single bias reproduction end to end at tiny scale (numbers meaningless; the pipeline
must run), and its verdict rule on constructed numbers."""
import json

import pytest

from unigrad.cli import main
from unigrad.repro import NOT_REPRODUCED, PARTLY, REPRODUCED, VERDICTS
from unigrad.repro.pes import decide


def test_pes_bias_runs_at_tiny_scale(tmp_path):
    assert main(["repro", "pes-bias", "--tiny", "--out", str(tmp_path), "--no-progress"]) == 0
    result = json.loads((tmp_path / "pes-bias" / "result.json").read_text())
    assert result["verdict"] in VERDICTS and result["scale"] == "tiny"
    assert set(result["numbers"]["bias"]["estimators"]) == {"tbptt", "es", "pes", "es-single"}
    assert len(result["table"]) == 4
    for figure in result["figures"]:
        assert (tmp_path / "pes-bias" / figure).stat().st_size > 0
    bias = result["numbers"]["bias"]
    assert bias["estimators"]["tbptt"]["mean"] * bias["exact"] < 0     # the toy's point: TBPTT has the wrong sign


def _bias(pes_mean, single_mean, tbptt_mean=-26.0, exact=3571.0, se=90.0, sd_pes=900.0, sd_single=700.0):
    row = lambda mean, s, sd: {"mean": mean, "standard_error": s, "sd": sd, "bias": mean - exact}
    return {"exact": exact, "estimators": {"tbptt": row(tbptt_mean, 0.0, 0.0), "pes": row(pes_mean, se, sd_pes),
                                           "es-single": row(single_mean, se, sd_single)}}


def test_the_verdict_rule():
    assert decide(_bias(3500.0, 3600.0))[0] == REPRODUCED
    assert decide(_bias(3500.0, 3600.0, sd_single=1000.0))[0] == PARTLY       # ES-Single not lower-variance
    assert decide(_bias(3000.0, 3600.0))[0] == PARTLY                         # PES off by > 3 s.e.
    assert decide(_bias(3500.0, 3600.0, tbptt_mean=3400.0))[0] == NOT_REPRODUCED   # TBPTT within 10 %


def test_pes_lr_schedule_runs_at_tiny_scale(tmp_path):
    assert main(["repro", "pes-lr-schedule", "--tiny", "--out", str(tmp_path), "--no-progress"]) == 0
    result = json.loads((tmp_path / "pes-lr-schedule" / "result.json").read_text())
    assert result["verdict"] in VERDICTS and result["scale"] == "tiny"
    numbers = result["numbers"]
    assert set(numbers["runs"]) == {"es", "pes", "es-single"}
    steps = numbers["setting"]["steps"]
    for runs in numbers["runs"].values():
        assert len(runs[0]["schedule"]) == steps == len(runs[0]["held_out"])
        assert runs[0]["meta_loss"][0] == pytest.approx(sum(numbers["initial"]["held_out"]))   # all start at θ₀
    for figure in result["figures"]:
        assert (tmp_path / "pes-lr-schedule" / figure).stat().st_size > 0


def test_the_schedule_verdict_rule():
    from unigrad.repro.pes import decide_schedule
    assert decide_schedule(100.0, {"es": [80.0, 82.0], "pes": [75.0, 76.0], "es-single": [74.0, 78.0]})[0] == REPRODUCED
    assert decide_schedule(100.0, {"es": [70.0, 70.0], "pes": [75.0, 76.0], "es-single": [74.0, 78.0]})[0] == PARTLY
    assert decide_schedule(100.0, {"es": [80.0, 82.0], "pes": [75.0, 95.0], "es-single": [74.0, 78.0]})[0] == PARTLY
    assert decide_schedule(100.0, {"es": [80.0, 82.0], "pes": [91.0, 76.0], "es-single": [95.0, 78.0]})[0] == NOT_REPRODUCED
