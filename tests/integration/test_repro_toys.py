"""`unigrad repro fisher-merging --tiny` and `unigrad repro distill-kl --tiny` end to end (tiny random
models: the numbers mean nothing, the pipeline — trained, merged or distilled, measured, judged,
plotted, paged — must run), and their verdict rules on made-up numbers."""
import html
import json

import pytest

from unigrad.cli import main
from unigrad.repro import NOT_REPRODUCED, PARTLY, REPRODUCED, VERDICTS
from unigrad.repro import distill, merging


def _run(name, tmp_path):
    assert main(["repro", name, "--tiny", "--out", str(tmp_path), "--no-progress"]) == 0
    result = json.loads((tmp_path / name / "result.json").read_text())
    assert result["name"] == name and result["scale"] == "tiny" and result["verdict"] in VERDICTS
    assert result["figures"] and all((tmp_path / name / f).stat().st_size > 0 for f in result["figures"])
    assert html.escape(result["title"]) in (tmp_path / name / "index.html").read_text()
    return result


def test_fisher_merging_tiny_end_to_end(tmp_path):
    result = _run("fisher-merging", tmp_path)
    per_seed = result["numbers"]["results"]
    assert list(per_seed) == ["0"]
    models = per_seed["0"]
    assert {merging.AVERAGE, merging.FISHER, "base"} <= set(models)
    for nll in models.values():
        assert nll["nll_a"] > 0 and nll["nll_b"] > 0 and nll["mean"] == pytest.approx((nll["nll_a"] + nll["nll_b"]) / 2)
    assert {row["model"] for row in result["table"]} == set(models)
    assert result["numbers"]["fisher_wins"] in (0, 1)


def test_distill_kl_tiny_end_to_end(tmp_path):
    result = _run("distill-kl", tmp_path)
    numbers = result["numbers"]
    assert numbers["before"] > 0 and list(numbers["after"]) == ["0"]
    assert set(numbers["after"]["0"]) == set(distill.METHODS)
    assert all(kl >= 0 for kl in numbers["after"]["0"].values())
    assert [row["method"] for row in result["table"]] == list(distill.METHODS)


def _merging_results(fisher_better):
    return {s: {merging.AVERAGE: {"mean": 3.0}, merging.FISHER: {"mean": 2.0 if better else 4.0}}
            for s, better in enumerate(fisher_better)}


@pytest.mark.parametrize("fisher_better, verdict", [((True, True, True), REPRODUCED), ((True, False, True), PARTLY),
                                                     ((True, False, False), NOT_REPRODUCED),
                                                     ((False,), NOT_REPRODUCED)])
def test_fisher_merging_rule(fisher_better, verdict):
    assert merging.decide(_merging_results(fisher_better))[0] == verdict


@pytest.mark.parametrize("lowered, verdict", [(6, REPRODUCED), (3, PARTLY), (2, NOT_REPRODUCED)])
def test_distill_rule(lowered, verdict):
    after = {m: 0.5 if k < lowered else 1.5 for k, m in enumerate(distill.METHODS)}
    numbers = {"before": 1.0, "after": {"0": after, "1": dict(after)}}
    assert distill.decide(numbers)[0] == verdict
    numbers["after"]["1"][distill.METHODS[0]] = 1.0          # not lower in one seed: that method does not count
    assert distill.decide(numbers)[2] == list(distill.METHODS[1:lowered])
