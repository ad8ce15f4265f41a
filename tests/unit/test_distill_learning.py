"""Learning check: a tiny student trained a few steps with each distillation method on a tiny teacher
(another random seed, sharpened head) gets closer to it — the full-vocabulary KL(p_T ‖ p_S) on held-out
sequences falls. The mini loop is the one the training loop will run: distill_fields → Batch → loss.

Sequences use 12 token ids so that held-out contexts share their tokens with the training ones (a
1-layer tiny model is close to a bigram model; unseen tokens could not be learnt from 8 sequences).
SinKD alone is a batch-level optimal-transport distance, invariant to which token is matched with which:
it lowers the per-token KL early on (checked over 10 steps) and then drifts, so it is also checked on
its own objective and in the official T0 combination with a KD term.
"""
import copy
import random

import pytest
import torch

import unigrad as ug
from unigrad.data.packing import collate
from unigrad.logprobs import distill_fields
from unigrad.models import tiny_random_model
from unigrad.objectives import Sum, Term
from unigrad.tokens import Sequence

IDS = 12
CASES = [  # name, params, k, learning rate, steps
    ("kd-forward", {}, 16, 1e-2, 15), ("kd-forward", {}, None, 1e-2, 15), ("kd-reverse", {}, 16, 1e-2, 15),
    ("kd-js", {"beta": 0.5}, 16, 1e-2, 15), ("kd-js", {"beta": 0.5, "support": "renormalise"}, 16, 1e-2, 15),
    ("bd-kd", {}, 16, 1e-2, 15), ("pld", {}, 16, 1e-2, 15), ("pld", {"label": "teacher"}, None, 1e-2, 15),
    ("sinkd", {"temperature": 1.0}, None, 5e-3, 10),
]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny ops on a shared CPU are dominated by thread synchronisation: run them on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _sequences(seed, n):
    rng = random.Random(seed)
    return [Sequence(tuple(rng.randrange(IDS) for _ in range(3)), tuple(rng.randrange(IDS) for _ in range(6)))
            for _ in range(n)]


def _model(seed, head_scale):
    model = tiny_random_model(seed=seed, hidden=32, layers=1, heads=2)
    with torch.no_grad():
        model.lm_head.weight.mul_(head_scale)
    return model


@pytest.fixture(scope="module")
def setup():
    return dict(teacher=_model(seed=11, head_scale=40.0), student=_model(seed=12, head_scale=1.0),
                train=collate(_sequences(0, 8), pad_id=258), held_out=collate(_sequences(1, 8), pad_id=258))


def _held_out_kl(student, teacher, tb):
    with torch.no_grad():
        fields = distill_fields(student, teacher, tb, k=None, chunk_size=64)
    mask = tb.completion_mask > 0
    log_t, log_s = fields["teacher_logp_topk"][mask], fields["student_logp_topk"][mask]
    return float((log_t.exp() * (log_t - log_s)).sum(-1).mean())


def _train(setup, objective, k, lr, steps):
    torch.manual_seed(0)
    student = copy.deepcopy(setup["student"]).train()
    optimiser = torch.optim.Adam(student.parameters(), lr=lr)
    values = []
    for _ in range(steps):
        fields = distill_fields(student, setup["teacher"], setup["train"], k=k, chunk_size=32)
        batch = ug.Batch(logp=fields["student_logp_target"], mask=setup["train"].completion_mask, extra=fields)
        out = objective.loss(batch)
        values.append(float(out.objective))
        optimiser.zero_grad()
        out.loss.backward()
        optimiser.step()
    return student, values


@pytest.mark.parametrize("name,params,k,lr,steps", CASES, ids=[f"{c[0]}{c[1]}k={c[2]}" for c in CASES])
def test_distillation_reduces_kl_to_teacher(setup, name, params, k, lr, steps):
    before = _held_out_kl(setup["student"], setup["teacher"], setup["held_out"])
    student, values = _train(setup, ug.method(name, **params), k, lr, steps)
    after = _held_out_kl(student, setup["teacher"], setup["held_out"])
    assert after < 0.9 * before, f"{name}{params}: held-out KL {before:.4f} → {after:.4f}"
    assert values[-1] < values[0], f"{name}{params}: its own objective rose {values[0]:.4f} → {values[-1]:.4f}"


def test_sinkd_default_lowers_its_distance_and_helps_kd(setup):
    _, values = _train(setup, ug.method("sinkd"), None, 5e-3, 10)
    assert values[-1] < values[0]
    # the T0 script's combination (CE aside): 0.1 · KD + Sinkhorn
    combined = Sum((Term(0.1, ug.method("kd-forward"), "kd"), Term(1.0, ug.method("sinkd"), "sinkhorn")))
    before = _held_out_kl(setup["student"], setup["teacher"], setup["held_out"])
    student, _ = _train(setup, combined, None, 1e-2, 15)
    assert _held_out_kl(student, setup["teacher"], setup["held_out"]) < 0.9 * before
