"""unigrad.logprobs.support: chunked teacher top-k / student log-probs at the support equal a naive full-logits
computation (tiny random models, float64), padded and packed, values and parameter gradients."""
import random

import pytest
import torch

from unigrad.data.packing import collate
from unigrad.logprobs import (
    DISTILL_FIELDS, distill_fields, student_logprobs_at, student_logprobs_full, teacher_topk, token_logprobs,
)
from unigrad.models import tiny_random_model
from unigrad.tokens import Sequence

VOCAB = 260


def _sharpen(model, scale):
    with torch.no_grad():
        model.lm_head.weight.mul_(scale)
    return model


@pytest.fixture(scope="module")
def student():
    return _sharpen(tiny_random_model(seed=1, hidden=32, layers=1, heads=2, dtype=torch.float64), 20.0)


@pytest.fixture(scope="module")
def teacher():
    return _sharpen(tiny_random_model(seed=2, hidden=32, layers=1, heads=2, dtype=torch.float64), 30.0)


def _sequences(seed=0, n=4):
    rng = random.Random(seed)
    return [Sequence(tuple(rng.randrange(VOCAB) for _ in range(rng.randint(1, 5))),
                     tuple(rng.randrange(VOCAB) for _ in range(rng.randint(1, 6)))) for _ in range(n)]


def _naive_logp(model, tb, temperature=1.0):
    """[B, T, V] full log-softmax at the positions predicting the completion tokens (one padded forward)."""
    logits = model(input_ids=tb.input_ids, position_ids=tb.position_ids).logits.to(torch.float64) / temperature
    return torch.log_softmax(logits, -1)[tb.completion_row, tb.completion_col - 1]


@pytest.mark.parametrize("k", [None, 5])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_teacher_topk_matches_naive(teacher, k, temperature):
    tb = collate(_sequences(0), pad_id=258)
    values, indices, extras = teacher_topk(teacher, tb, k, chunk_size=3, temperature=temperature, return_extras=True)
    mask = tb.completion_mask > 0
    with torch.no_grad():
        full = _naive_logp(teacher, tb, temperature)
    targets = tb.input_ids[tb.completion_row, tb.completion_col]
    torch.testing.assert_close(extras["target"][mask], full.gather(-1, targets[..., None])[..., 0][mask])
    if k is None:
        assert indices is None and values.shape == (*mask.shape, VOCAB)
        torch.testing.assert_close(values[mask], full[mask])
        assert torch.isneginf(extras["rest"]).all()
    else:
        ref_v, ref_i = torch.topk(full, k, -1)
        torch.testing.assert_close(values[mask], ref_v[mask])
        assert torch.equal(indices[mask], ref_i[mask])
        rest = torch.log(1 - ref_v.exp().sum(-1))
        torch.testing.assert_close(extras["rest"][mask], rest[mask])
    assert torch.all(values[~mask] == 0)
    assert not values.is_inference()


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("k", [None, 4])
def test_student_logprobs_at_matches_naive_with_gradients(student, teacher, packed, k):
    seqs = _sequences(1)
    tb = collate(seqs, pad_id=258, packed=packed, max_tokens_per_row=16 if packed else None)
    _, indices = teacher_topk(teacher, tb, k, chunk_size=2)
    mask = tb.completion_mask > 0
    weights = torch.randn(*mask.shape, VOCAB if k is None else k, dtype=torch.float64)

    student.zero_grad(set_to_none=True)
    values, extras = student_logprobs_at(student, tb, indices, chunk_size=3, return_extras=True)
    (values * weights).sum().add(extras["rest"].where(mask, 0).nan_to_num(neginf=0).sum()).backward()
    got = [p.grad.clone() for p in student.parameters()]

    student.zero_grad(set_to_none=True)
    tb_pad = collate(seqs, pad_id=258)     # the naive reference runs each layout through a padded forward
    full = _naive_logp(student, tb_pad)
    ref = full if k is None else full.gather(-1, indices)
    ref = ref * mask[..., None]
    if k is None:
        ref_rest = torch.zeros(mask.shape, dtype=torch.float64)
    else:
        ref_rest = torch.log1p(-full.gather(-1, indices).exp().sum(-1)) * mask
    (ref * weights).sum().add(ref_rest.sum()).backward()
    want = [p.grad.clone() for p in student.parameters()]

    torch.testing.assert_close(values, ref.detach())
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-10)
    targets = tb_pad.input_ids[tb_pad.completion_row, tb_pad.completion_col]
    torch.testing.assert_close(extras["target"].detach(), token_logprobs(student, tb, chunk_size=5).detach())
    torch.testing.assert_close(extras["target"][mask].detach(), full.gather(-1, targets[..., None])[..., 0][mask].detach())


def test_tail_excludes_target(student, teacher):
    tb = collate(_sequences(2), pad_id=258)
    _, indices = teacher_topk(teacher, tb, 3, chunk_size=4)
    _, extras = student_logprobs_at(student, tb, indices, chunk_size=4, return_extras=True)
    mask = tb.completion_mask > 0
    with torch.no_grad():
        p = _naive_logp(student, tb).exp()
    targets = tb.input_ids[tb.completion_row, tb.completion_col]
    outside = p.scatter(-1, indices, 0.0).scatter(-1, targets[..., None], 0.0).sum(-1)
    torch.testing.assert_close(extras["tail"][mask].detach(), outside.log()[mask])


def test_full_variant(student):
    tb = collate(_sequences(3), pad_id=258)
    mask = tb.completion_mask > 0
    with torch.no_grad():
        torch.testing.assert_close(student_logprobs_full(student, tb, chunk_size=2)[mask], _naive_logp(student, tb)[mask])


def test_distill_fields(student, teacher):
    tb = collate(_sequences(4), pad_id=258)
    fields = distill_fields(student, teacher, tb, k=6, chunk_size=3)
    assert set(fields) <= DISTILL_FIELDS and set(fields) == DISTILL_FIELDS
    assert fields["student_logp_topk"].requires_grad and not fields["teacher_logp_topk"].requires_grad
    mask = tb.completion_mask > 0
    lp = token_logprobs(student, tb, chunk_size=3)
    torch.testing.assert_close(fields["student_logp_target"][mask], lp[mask])
    # the teacher's top-k, the rest and the student's support add up to one distribution each
    for who in ("student", "teacher"):
        total = torch.logaddexp(torch.logsumexp(fields[f"{who}_logp_topk"], -1), fields[f"{who}_logp_rest"])
        torch.testing.assert_close(total[mask].detach(), torch.zeros(int(mask.sum()), dtype=torch.float64))
    full = distill_fields(student, teacher, tb, k=None, chunk_size=3)
    assert "topk_indices" not in full and full["teacher_logp_topk"].shape[-1] == VOCAB
    assert full["target_in_topk"][mask].sum(-1).eq(1).all()
