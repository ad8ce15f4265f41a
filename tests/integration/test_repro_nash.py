"""`unigrad repro nash-mp-rate --tiny` end to end (its numbers mean nothing at this scale: the pipeline — unigrad's
methods run on the tabular game, measured, judged, plotted, paged — must run), and its verdict rule on made-up
numbers."""
import json

import pytest

from unigrad.cli import main
from unigrad.repro import NOT_REPRODUCED, PARTLY, REPRODUCED, VERDICTS
from unigrad.repro import nash


def test_nash_mp_rate_tiny_end_to_end(tmp_path):
    assert main(["repro", "nash-mp-rate", "--tiny", "--out", str(tmp_path), "--no-progress"]) == 0
    result = json.loads((tmp_path / "nash-mp-rate" / "result.json").read_text())
    assert result["scale"] == "tiny" and result["verdict"] in VERDICTS
    assert all((tmp_path / "nash-mp-rate" / f).stat().st_size > 0 for f in result["figures"])
    game = result["numbers"]["games"][0]
    assert game["runs"]["nash-mp"]["max_deviation"] < 1e-9           # unigrad's run is the closed-form iteration
    assert game["runs"]["nash-mp"]["kl"][-1] < game["kl_start"]


def _games(deviation, r2, rhos):
    return [{"runs": {"nash-mp": {"max_deviation": deviation, "fit": {"r2": r2, "rho": rho}}}} for rho in rhos]


def test_nash_mp_rate_verdict_rule():
    assert nash.decide(_games(1e-14, 0.999, [0.3, 0.5]))[0] == REPRODUCED
    assert nash.decide(_games(1e-14, 0.999, [0.3, 0.9]))[0] == PARTLY           # one game slower than the bound
    assert nash.decide(_games(1e-14, 0.9, [0.3, 0.5]))[0] == NOT_REPRODUCED     # not linear
    assert nash.decide(_games(1e-3, 0.999, [0.3, 0.5]))[0] == NOT_REPRODUCED    # not the paper's iteration
    assert nash.fit([0.1 * 0.5 ** k for k in range(80)])["rho"] == pytest.approx(0.5, rel=1e-9)
