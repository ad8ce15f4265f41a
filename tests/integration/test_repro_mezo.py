"""The MeZO reproductions end to end at tiny scale (numbers meaningless; the pipeline must run), and
the estimator reproduction's rule on its own numbers."""
import json

import pytest

from unigrad.cli import main
from unigrad.repro import VERDICTS


@pytest.mark.parametrize("name", ["mezo-estimator", "mezo-memory", "mezo-curve"])
def test_mezo_reproductions_run_at_tiny_scale(tmp_path, name):
    assert main(["repro", name, "--tiny", "--out", str(tmp_path), "--no-progress"]) == 0
    result = json.loads((tmp_path / name / "result.json").read_text())
    assert result["verdict"] in VERDICTS and result["scale"] == "tiny" and result["numbers"]
    for figure in result["figures"]:
        assert (tmp_path / name / figure).stat().st_size > 0
    if name == "mezo-estimator":     # the measured error follows √((d+1)/n) even with few samples
        for problem in result["numbers"].values():
            assert all(0.4 < e / t < 2.5 for e, t in zip(problem["relative_error"], problem["theory"]))
    if name == "mezo-memory":
        processes = result["numbers"]["processes"]
        assert set(processes) == {"inference", "mezo", "backprop"}
        assert all(p["peak_rss_mib"] > 50 for p in processes.values())
