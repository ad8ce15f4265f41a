"""The learning-rate-schedule problem over a real unigrad run (``gradients.hyper``): its shapes, that a
particle's unroll IS the unigrad loop's training step (the same weights as ``train.optimise`` with the
same learning rates, to 1e-6), and that the ES estimators run on it."""
import json
from pathlib import Path

import pytest
import torch

from unigrad.config import ConfigError, load_config
from unigrad.gradients.hyper import ScheduleTuning, schedule
from unigrad.gradients.unrolled import DTYPE, UnrolledProblem, make

DATA = Path(__file__).resolve().parents[2] / "src" / "unigrad" / "resources" / "data" / "sft"
T = 3


def _config(tmp, **train):
    return load_config(None, [], text=json.dumps({
        "model": "tiny-random", "method": {"name": "sft"},
        "data": {"train": str(DATA / "train.jsonl"), "eval": str(DATA / "eval.jsonl"), "format": "sft",
                 "max_length": 256},
        "train": {"steps": T, "batch_size": 2, "optimizer": "sgd", "lr": 0.1, "tensorboard": False, "threads": 1,
                  **train},
        "output_dir": str(tmp)}))


@pytest.fixture(scope="module")
def problem(tmp_path_factory):
    return ScheduleTuning(_config(tmp_path_factory.mktemp("inner")), held_out=2)


def test_shapes_and_protocol(problem):
    assert isinstance(problem, UnrolledProblem) and problem.T == T and problem.dim == 2
    state = problem.init_state(3)
    assert state.shape == (3, problem.start.numel() + 1) and bool((state[:, -1] == 0).all())
    theta = torch.tensor([[-1.0, -2.0], [-1.0, -2.0], [-3.0, -3.0]], dtype=DTYPE)
    new, losses = problem.unroll(state, theta, 2)
    assert new.shape == state.shape and losses.shape == (3,) and losses.dtype == DTYPE
    assert bool((new[:, -1] == 2).all()) and bool(torch.isfinite(losses).all())
    assert torch.equal(new[0], new[1]) and not torch.equal(new[0], new[2])     # each particle its own θ row
    assert torch.equal(state, problem.init_state(3))                          # the input state is not changed
    with pytest.raises(ValueError, match="past T"):
        problem.unroll(new, theta, 2)


def test_schedule_is_the_linear_interpolation_of_the_two_log_rates():
    lr = schedule(torch.tensor([0.0, 2.0], dtype=DTYPE), 4)
    expected = [1 + (torch.e ** 2 - 1) * t / 4 for t in range(4)]
    assert torch.allclose(lr, torch.tensor(expected, dtype=DTYPE))


def test_unroll_is_the_unigrad_training_run(problem, tmp_path):
    """Two particles with different schedules, T steps in one unroll, against two plain runs of the
    loop (``train.optimise`` with each step's lr set as ``train.train`` sets it) and their held-out
    objective (``evaluate_objective``). The clip at max_grad_norm = 1 is active (the tiny model's
    gradient norm is larger), so it is compared too."""
    from unigrad.evaluate import evaluate_objective
    from unigrad.run import assemble
    from unigrad.train import StepLoss, optimise
    thetas = torch.tensor([[-0.5, -2.0], [0.3, 0.1]], dtype=DTYPE)
    state, losses = problem.unroll(problem.init_state(2), thetas, T)
    for row, theta, loss in zip(state, thetas, losses):
        run = assemble(_config(tmp_path))
        norms, held = [], 0.0
        for step, lr in enumerate(schedule(theta, T).tolist()):
            for group in run.optimizer.param_groups:
                group["lr"] = lr
            norms.append(optimise(run, run.experience(step), step)[1])
            held += evaluate_objective(StepLoss(run), run.model, problem.held_out, 16, run.device)["objective"]
        weights = torch.cat([p.detach().reshape(-1) for p in run.model.parameters() if p.requires_grad])
        assert max(norms) > 1.0                                           # clipping happened
        assert torch.allclose(row[:-1], weights, atol=1e-6, rtol=0)
        assert float(loss) == pytest.approx(held, abs=1e-5)
        assert float((weights - problem.start).abs().max()) > 1e-3        # the run moved the weights


@pytest.mark.parametrize("name", ["es", "pes", "es-single"])
def test_the_es_estimators_run_on_it(problem, name):
    estimator = make(name, problem, 1, particles=2, sigma=0.3, seed=0)
    grads = [estimator.step(torch.tensor([-1.0, -1.0], dtype=DTYPE)) for _ in range(2)]
    assert all(g.shape == (2,) and bool(torch.isfinite(g).all()) for g in grads)
    assert estimator.t == 2 and any(bool(g.abs().sum() > 0) for g in grads)


def test_not_differentiable_and_config_errors(problem, tmp_path):
    with pytest.raises(ValueError, match="es-single"):
        make("tbptt", problem, 1).step(torch.tensor([-1.0, -1.0], dtype=DTYPE))
    with pytest.raises(ConfigError, match="train.optimizer"):
        ScheduleTuning(_config(tmp_path, optimizer="adamw"))
    with pytest.raises(ConfigError, match="momentum"):
        ScheduleTuning(_config(tmp_path, optimizer_args={"momentum": 0.9}))
    with pytest.raises(ConfigError, match="held-out"):
        ScheduleTuning(load_config(None, [], text=json.dumps({
            "model": "tiny-random", "method": {"name": "sft"}, "data": {"train": str(DATA / "train.jsonl"),
            "format": "sft"}, "train": {"steps": 2, "optimizer": "sgd"}, "output_dir": str(tmp_path)})))


def test_tune_schedule_returns_the_schedule_and_its_curve(tmp_path):
    from unigrad.gradients.hyper import tune_schedule
    found = tune_schedule(_config(tmp_path), "es-single", iterations=2, particles=2, held_out=2, eval_every=1)
    assert found["K"] == 1 and len(found["schedule"]) == T and len(found["curve"]["meta_loss"]) == 3
    assert found["curve"]["theta"][0] == [-4.0, -4.0] and found["theta"] != [-4.0, -4.0]
    assert found["schedule"] == pytest.approx(schedule(torch.tensor(found["theta"], dtype=DTYPE), T).tolist())
