"""Sophia: the update is the paper's Algorithm 3 (against a per-coordinate canonical), the Gauss–Newton–
Bartlett estimate is unbiased for the diagonal of the cross-entropy's Gauss–Newton matrix, Hutchinson's
is u ⊙ H u for the exact Hessian, and labels are drawn from the model's own distribution."""
import torch
from torch.func import functional_call

from tests.canonical.curvature import exact_fisher_diagonal, sophia_steps
from unigrad.batch import Batch
from unigrad.data.packing import collate
from unigrad.gradients.curvature import GaussNewtonBartlett, Hutchinson, curvature
from unigrad.logprobs import sampled_label_logprobs, token_logprobs
from unigrad.logprobs.producers import TokenLogprobs
from unigrad.logprobs.readout import completion_states
from unigrad.models import tiny_random_model
from unigrad.optim import Sophia
from unigrad.parallel.model_call import ModelCall
from unigrad.tokens import Sequence


def test_sophia_step_is_the_papers_algorithm_coordinate_by_coordinate():
    g = torch.Generator().manual_seed(0)
    theta0 = torch.randn(7, dtype=torch.float64, generator=g)
    gradients = [torch.randn(7, dtype=torch.float64, generator=g) for _ in range(7)]
    curvatures = {0: torch.rand(7, dtype=torch.float64, generator=g) * 3,
                  3: torch.rand(7, dtype=torch.float64, generator=g) * 3,
                  6: torch.rand(7, dtype=torch.float64, generator=g) * 1e-9}    # tiny: hits ε and the clip
    settings = dict(lr=0.05, betas=(0.9, 0.95), rho=0.5, eps=1e-6, weight_decay=0.1)
    w = torch.nn.Parameter(theta0.clone())
    optimizer = Sophia([w], **settings)
    for t, grad in enumerate(gradients):
        if t in curvatures:
            optimizer.refresh({w: curvatures[t]})
        w.grad = grad.clone()
        optimizer.step()
    expected = sophia_steps(theta0.tolist(), [x.tolist() for x in gradients],
                            {t: c.tolist() for t, c in curvatures.items()}, settings["lr"], *settings["betas"],
                            settings["rho"], settings["eps"], settings["weight_decay"])
    torch.testing.assert_close(w.detach(), torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    restored = Sophia([torch.nn.Parameter(theta0.clone())], **settings)
    restored.load_state_dict(optimizer.state_dict())
    assert torch.equal(next(iter(restored.state.values()))["hessian"], optimizer.state[w]["hessian"])


def _setting(dtype=torch.float64):
    model = tiny_random_model(seed=3, hidden=16, layers=1, heads=2, dtype=dtype)
    sequences = [Sequence((5, 9, 12), (40, 41, 42)), Sequence((7, 8), (50, 51))]
    tb = collate(sequences, 0)
    return model, sequences, tb


def _micro_batch(model, sequences, tb, objective_of=None):
    """One micro-batch closure as the loop builds it (``train.StepLoss``): the run's objective and
    producer, or the overrides an update rule passes."""
    def loss_of(objective=None, logprobs=None):
        logprobs = logprobs or TokenLogprobs(1024, 0)
        logp = logprobs(ModelCall(model), sequences, tb)["logp"]
        batch = Batch(logp=logp, mask=tb.completion_mask.to(logp.dtype))
        return (objective or objective_of).loss(batch), tb.input_ids.numel()
    return loss_of


def test_sampled_labels_follow_the_models_distribution_and_carry_its_gradient():
    model, sequences, tb = _setting()
    states = completion_states(model, tb)
    probs = torch.softmax(states.logits(states.hidden).detach(), -1)        # [N, V]
    counts = torch.zeros_like(probs)
    from unigrad.logprobs.sampled import sample_labels
    draws = 3000
    for seed in range(draws):
        labels = sample_labels(states, chunk_size=2, seed=seed)
        counts[torch.arange(len(labels)), labels] += 1
    assert float((counts / draws - probs).abs().max()) < 0.04            # ≈ 4 standard errors at p = 0.1
    logp = sampled_label_logprobs(model, tb, chunk_size=2, seed=11)
    labels = sample_labels(completion_states(model, tb), 2, 11)
    expected = torch.log_softmax(states.logits(states.hidden), -1)[torch.arange(len(labels)), labels]
    torch.testing.assert_close(logp[tb.completion_mask > 0], expected)
    assert logp.requires_grad


def test_gauss_newton_bartlett_is_unbiased_for_the_cross_entropy_gauss_newton_diagonal():
    model, sequences, tb = _setting()
    param = model.model.norm.weight
    for p in model.parameters():
        p.requires_grad_(p is param)

    def log_probs():
        states = completion_states(model, tb)
        return torch.log_softmax(states.logits(states.hidden), -1)
    exact = exact_fisher_diagonal(log_probs, param)
    estimate = GaussNewtonBartlett([param], chunk_size=1024, seed=0)
    micro = [_micro_batch(model, sequences, tb)]
    draws = 1500
    mean = sum(estimate(micro, lambda loss: loss.backward(), key).direction[0] for key in range(draws)) / draws
    cosine = float(torch.nn.functional.cosine_similarity(mean, exact, dim=0))
    assert cosine > 0.98, cosine
    assert float((mean.sum() - exact.sum()).abs() / exact.sum()) < 0.1


def test_hutchinson_is_u_times_the_exact_hessian_vector_product():
    model, sequences, tb = _setting()
    param = model.model.layers[0].mlp.down_proj.weight
    for p in model.parameters():
        p.requires_grad_(p is param)

    class SequenceLogLikelihood:          # a loss with a non-trivial Hessian: −Σ_b log σ(Σ_t logp)
        requires = frozenset({"logp"})

        def loss(self, batch):
            from unigrad.estimator.protocols import Output
            value = -torch.nn.functional.logsigmoid((batch.logp * batch.mask).sum(-1)).sum()
            return Output(value, value.detach())

    estimate = Hutchinson([param], seed=4)
    result = estimate([_micro_batch(model, sequences, tb, SequenceLogLikelihood())], lambda loss: loss.backward(), 9)
    generator = torch.Generator().manual_seed(((4 * 1_000_003 + 9) * 1_000_003) % (2 ** 63))
    u = torch.randn(param.shape, generator=generator, dtype=param.dtype)

    def loss_at(weight):
        logp = functional_call(model, {"model.layers.0.mlp.down_proj.weight": weight},
                               args=(), kwargs={"input_ids": tb.input_ids}).logits.log_softmax(-1)
        sel = tb.completion_mask > 0
        rows, cols = tb.completion_row[sel], tb.completion_col[sel]
        token = logp[rows, cols - 1].gather(-1, tb.input_ids[rows, cols][:, None]).squeeze(-1)
        per_sequence = torch.zeros(2, dtype=token.dtype).index_add(0, rows, token)
        return -torch.nn.functional.logsigmoid(per_sequence).sum()
    hessian = torch.autograd.functional.hessian(loss_at, param.detach().clone())
    hv = (hessian.reshape(param.numel(), param.numel()) @ u.reshape(-1)).reshape(param.shape)
    # the model's rotary embedding is computed in float32, so its exact Hessian is itself asymmetric at ~1e-9
    torch.testing.assert_close(result.direction[0], u * hv, rtol=1e-5, atol=1e-8)


def test_curvature_names_and_refusals():
    assert isinstance(curvature("hutchinson", []), Hutchinson)
    try:
        curvature("diagonal", [])
    except ValueError as error:
        assert "gauss-newton-bartlett" in str(error)
    else:
        raise AssertionError("an unknown curvature estimate must be refused")
