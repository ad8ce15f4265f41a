"""The CHES and GA-vs-NPO verdict rules and their statistics, on made-up numbers."""
import pytest
import torch

from unigrad.repro import NOT_REPRODUCED, PARTLY, REPRODUCED
from unigrad.repro import ches, unlearning


def test_spearman_and_permutation_test():
    a = torch.arange(20, dtype=torch.float64)
    assert ches.spearman(a, a ** 3) == pytest.approx(1.0)
    assert ches.spearman(a, -a) == pytest.approx(-1.0)
    assert ches.permutation_p(a, a ** 3) < 0.01                       # perfect order: only the identity matches it
    assert ches.permutation_p(a, -a) == pytest.approx(1.0)
    assert ches.rank(torch.tensor([3.0, 1.0, 3.0])).tolist() == [1.5, 0.0, 1.5]


def _ches_result(rho_p):
    result = {}
    for protocol, cells in zip(ches.PROTOCOLS, rho_p):
        result[protocol] = {}
        for score, (rho, p) in zip(ches.SCORES, cells):
            result[protocol] |= {f"{score}/spearman": rho, f"{score}/p": p}
    return result


def test_ches_verdict_counts_the_cells_that_hold():
    good, weak, wrong = (0.6, 0.001), (0.3, 0.2), (-0.5, 0.99)
    assert ches.decide(_ches_result([[good, good], [good, good]]))[0] == REPRODUCED
    verdict, reason = ches.decide(_ches_result([[good, weak], [good, wrong]]))
    assert verdict == PARTLY and reason.startswith("2 of 4")
    assert ches.decide(_ches_result([[weak, wrong], [weak, weak]]))[0] == NOT_REPRODUCED


def _trajectory(forget, retain):
    return [{"forget": f, "forget_median": f, "forget_min": f, "retain": r} for f, r in zip(forget, retain)]


def test_retain_at_interpolates_at_the_first_crossing():
    pts = _trajectory([0.0, 1.0, 3.0], [0.0, 2.0, 4.0])
    assert unlearning.retain_at(pts, 2.0) == pytest.approx(3.0)
    assert unlearning.retain_at(pts, 5.0) is None


def _run(beta, ga_retain, npo_retain):
    forget = [0.0, 1.0, 2.0, 3.0]
    ga, npo = _trajectory(forget, ga_retain), _trajectory(forget, npo_retain)
    return unlearning.measure(ga, npo, 2.5, 0, beta, 3)


def test_npo_verdict_needs_every_measure_and_the_collapse():
    npo_better = [_run(b, [0.0, 1.0, 2.0, 5.0], [0.0, 0.5, 1.0, 1.5]) for b in (0.1, 1.0)]
    verdict, reason, shares = unlearning.decide(npo_better, (0.1, 1.0))
    assert verdict == REPRODUCED, reason
    assert shares["mean, β=0.1"] == {"npo_lower": 5, "compared": 5}
    mixed = [npo_better[0], _run(1.0, [0.0, 0.5, 1.0, 1.5], [0.0, 1.0, 2.0, 5.0])]
    assert unlearning.decide(mixed, (0.1, 1.0))[0] == PARTLY
    ga_better = [_run(b, [0.0, 0.5, 1.0, 1.5], [0.0, 1.0, 2.0, 5.0]) for b in (0.1, 1.0)]
    assert unlearning.decide(ga_better, (0.1, 1.0))[0] == NOT_REPRODUCED
