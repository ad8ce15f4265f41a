"""`unigrad repro sophia-vs-adamw --tiny` end to end (the numbers mean nothing at this size; the pipeline —
data written, both optimisers tuned and trained through the loop, steps to target measured, judged,
plotted — must run), and the steps-to-target rule on made-up curves."""
import json

from unigrad.cli import main
from unigrad.repro import VERDICTS
from unigrad.repro.sophia import first_at_or_below, mean_curve


def test_sophia_vs_adamw_tiny_end_to_end(tmp_path):
    assert main(["repro", "sophia-vs-adamw", "--tiny", "--out", str(tmp_path), "--no-progress"]) == 0
    result = json.loads((tmp_path / "sophia-vs-adamw" / "result.json").read_text())
    assert result["verdict"] in VERDICTS and result["figures"] == ["sophia_vs_adamw.png"]
    numbers = result["numbers"]
    adamw = numbers["final"]["adamw"]["mean"]
    assert numbers["target"] == adamw[-1][1] and numbers["steps_to_target"]["adamw"] <= adamw[-1][0]
    assert [step for step, _ in adamw] == [0, 3, 6]           # before training, then every eval_every steps
    runs = tmp_path / "sophia-vs-adamw" / "runs"
    assert (runs / "sophia-g-lr0.003-seed0" / "final").is_dir() and (runs / "adamw-lr0.003-seed0" / "final").is_dir()


def test_steps_to_target_is_the_first_evaluation_at_or_below_it():
    curve = [(0, 5.0), (20, 3.0), (40, 2.0), (60, 2.5), (80, 1.0)]
    assert first_at_or_below(curve, 2.0) == 40 and first_at_or_below(curve, 0.5) is None
    assert mean_curve([[(0, 1.0), (10, 3.0)], [(0, 3.0), (10, 1.0)]]) == [(0, 2.0), (10, 2.0)]


def test_tuning_extends_the_grid_beyond_a_best_edge_until_the_best_is_inside():
    from unigrad.repro.sophia import tune
    loss = {1e-3: 3.0, 3e-3: 2.0, 1e-2: 1.0, 0.03: 0.5, 0.1: 0.8}
    tried = tune(lambda lr: [(0, 9.0), (10, loss[lr])], (1e-3, 3e-3, 1e-2), 3)
    assert list(tried) == [1e-3, 3e-3, 1e-2, 0.03, 0.1]            # 1e-2 at the edge → 0.03 → then 0.1, stop
    assert list(tune(lambda lr: [(0, 9.0), (10, loss[lr])], (1e-3, 3e-3, 1e-2), 0)) == [1e-3, 3e-3, 1e-2]
    assert list(tune(lambda lr: [(0, 9.0), (10, -lr)], (3e-3, 1e-2), 1)) == [3e-3, 1e-2, 0.03]
    assert list(tune(lambda lr: [(0, 9.0), (10, lr)], (3e-3, 1e-2), 1)) == [1e-3, 3e-3, 1e-2]
