"""`unigrad repro zo-rank-toy --tiny` end to end (its numbers mean nothing at this scale: the pipeline —
trained by unigrad's estimators, measured, judged, plotted, paged — must run), and its verdict rule
on made-up numbers."""
import html
import json

from unigrad.cli import main
from unigrad.repro import NOT_REPRODUCED, PARTLY, REPRODUCED, VERDICTS
from unigrad.repro import zo_rank


def test_zo_rank_toy_tiny_end_to_end(tmp_path):
    assert main(["repro", "zo-rank-toy", "--tiny", "--out", str(tmp_path), "--no-progress"]) == 0
    result = json.loads((tmp_path / "zo-rank-toy" / "result.json").read_text())
    assert result["scale"] == "tiny" and result["verdict"] in VERDICTS
    assert result["figures"] and all((tmp_path / "zo-rank-toy" / f).stat().st_size > 0 for f in result["figures"])
    assert html.escape(result["title"]) in (tmp_path / "zo-rank-toy" / "index.html").read_text()
    for function in zo_rank.FUNCTIONS:
        found = result["numbers"][function]
        assert set(found["runs"]) == set(zo_rank.METHODS)
        assert all(run["queries"][-1] <= 10 * zo_rank.QUERIES for runs in found["runs"].values() for run in runs)
        assert -1 <= found["alignment"]["zo-rank"]["cosine"] <= 1


def _found(rank_final, sgd_final, cosine, start=100.0):
    runs = lambda final: [{"final": final}]
    return {function: {"start": start, "runs": {"zo-rank": runs(rank_final), "zo-sgd": runs(sgd_final)},
                       "alignment": {"zo-rank": {"cosine": cosine}}} for function in zo_rank.FUNCTIONS}


def test_zo_rank_toy_verdict_rule():
    assert zo_rank.decide(_found(1.0, 0.8, 0.97))[0] == REPRODUCED
    assert zo_rank.decide(_found(10.0, 1.0, 0.97))[0] == PARTLY          # converges, but 10× ZO-SGD
    assert zo_rank.decide(_found(60.0, 1.0, 0.97))[0] == NOT_REPRODUCED  # does not halve f
    assert zo_rank.decide(_found(1.0, 1.0, 0.5))[0] == NOT_REPRODUCED    # direction not aligned
