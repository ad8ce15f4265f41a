"""M-FAC: the sliding-window inverse-Fisher-vector product equals the dense inverse, steps are
θ ← θ − lr F̂⁻¹ g, the window slides, and the optimiser's state survives a state_dict round trip."""
import torch

from tests.canonical.curvature import dense_inverse_fisher_product
from unigrad.optim import MFAC


def _gradients(n, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(d, generator=g, dtype=torch.float64) for _ in range(n)]


def test_mfac_step_is_the_dense_inverse_fisher_step_while_filling_and_sliding():
    d, m, lr, damping = 12, 4, 0.1, 1e-2
    w = torch.nn.Parameter(torch.zeros(3, 4, dtype=torch.float64))
    optimizer = MFAC([w], lr=lr, m=m, damping=damping)
    seen = []
    for g in _gradients(7, d):               # 7 steps with a window of 4: fills, then slides
        before = w.detach().clone().reshape(-1)
        w.grad = g.view(3, 4).clone()
        optimizer.step()
        seen.append(g)
        expected = before - lr * dense_inverse_fisher_product(seen[-m:], damping, g)
        torch.testing.assert_close(w.detach().reshape(-1), expected, rtol=1e-6, atol=1e-9)


def test_mfac_inverse_product_to_1e_minus_6_on_a_small_problem():
    d, m, damping = 50, 10, 1e-3
    w = torch.nn.Parameter(torch.zeros(d, dtype=torch.float64))
    optimizer = MFAC([w], lr=0.0, m=m, damping=damping)
    gradients = _gradients(m, d, seed=1)
    for g in gradients:
        w.grad = g.clone()
        optimizer.step()
    x = torch.randn(d, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    dense = dense_inverse_fisher_product(gradients, damping, x)
    assert float((optimizer.inverse_fisher_product(x) - dense).norm() / dense.norm()) < 1e-6


def test_mfac_state_round_trips_through_a_state_dict():
    a = torch.nn.Parameter(torch.zeros(6, dtype=torch.float64))
    b = torch.nn.Parameter(torch.zeros(6, dtype=torch.float64))
    first, second = MFAC([a], lr=0.1, m=3, momentum=0.5), MFAC([b], lr=0.1, m=3, momentum=0.5)
    gradients = _gradients(5, 6)
    for g in gradients[:3]:
        a.grad = g.clone()
        first.step()
    second.load_state_dict(first.state_dict())
    with torch.no_grad():
        b.copy_(a)
    for g in gradients[3:]:
        a.grad, b.grad = g.clone(), g.clone()
        first.step()
        second.step()
    torch.testing.assert_close(a, b, rtol=0, atol=0)
