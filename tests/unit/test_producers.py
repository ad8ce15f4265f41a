"""Log-prob producers return exactly what the function each wraps returns, and the table picks the right one."""
import random

import pytest
import torch

from unigrad.data.packing import collate
from unigrad.logprobs import (
    DISTILL_FIELDS, PRODUCED_FIELDS, BestOtherToken, TeacherSupport, TokenLogprobs, choose_producer, distill_fields,
    shared_prompt_logprobs, token_logprobs, token_logprobs_with_top_other,
)
from unigrad.models import tiny_random_model
from unigrad.tokens import Sequence

VOCAB, PAD, CHUNK = 260, 258, 3


class Recording:
    """``engine(fn, *args, **kw)`` = ``fn(model, *args, **kw)``, remembering which functions ran."""

    def __init__(self, model):
        self.model, self.calls = model, []

    def __call__(self, fn, *args, **kwargs):
        self.calls.append(fn)
        return fn(self.model, *args, **kwargs)


@pytest.fixture(scope="module")
def student():
    return tiny_random_model(seed=3, dtype=torch.float64)


@pytest.fixture(scope="module")
def teacher():
    return tiny_random_model(seed=4, dtype=torch.float64)


def _sequences(shared: bool, seed=0):
    rng = random.Random(seed)
    prompts = [tuple(rng.randrange(VOCAB) for _ in range(rng.randint(1, 6))) for _ in range(3)]
    return [Sequence(prompts[i % 3] if shared else prompts[i % 3] + (i,),
                     tuple(rng.randrange(VOCAB) for _ in range(rng.randint(1, 7))), group=i % 3) for i in range(6)]


def _with_grads(model, fields):
    """The fields (detached) and the gradient of a fixed weighted sum of their finite float entries."""
    model.zero_grad(set_to_none=True)
    total = sum((v * (i + 1) * 0.1).masked_fill(~torch.isfinite(v), 0).sum()
                for i, (k, v) in enumerate(sorted(fields.items())) if v.is_floating_point() and v.requires_grad)
    total.backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    model.zero_grad(set_to_none=True)
    return {k: v.detach() for k, v in fields.items()}, grads


def _assert_same(produced, expected):
    (fields_a, grads_a), (fields_b, grads_b) = produced, expected
    assert fields_a.keys() == fields_b.keys()
    for key in fields_a:
        assert torch.equal(fields_a[key], fields_b[key]), key
    assert torch.equal(grads_a, grads_b)


@pytest.mark.parametrize("packed", [False, True])
def test_token_logprobs_producer_equals_token_logprobs(student, packed):
    seqs = _sequences(shared=True)
    tb = collate(seqs, PAD, packed=packed)
    engine = Recording(student)
    produced = TokenLogprobs(chunk_size=CHUNK, pad_id=PAD)(engine, seqs, tb)
    assert produced.keys() == TokenLogprobs.provides and engine.calls == [token_logprobs]
    _assert_same(_with_grads(student, produced), _with_grads(student, {"logp": token_logprobs(student, tb, CHUNK)}))


@pytest.mark.parametrize("shared, agreed, path", [(True, True, shared_prompt_logprobs), (True, False, token_logprobs),
                                                  (False, True, token_logprobs)])
def test_token_logprobs_producer_shares_prompts_when_they_are_shared_and_processes_agree(student, shared, agreed, path):
    seqs = _sequences(shared=shared)
    tb = collate(seqs, PAD)
    engine = Recording(student)
    produced = TokenLogprobs(CHUNK, PAD, share_prompts=True, agree=lambda flag: flag and agreed)(engine, seqs, tb)
    assert engine.calls == [path]
    expected = (shared_prompt_logprobs(student, seqs, PAD, CHUNK) if path is shared_prompt_logprobs
                else token_logprobs(student, tb, CHUNK))
    _assert_same(_with_grads(student, produced), _with_grads(student, {"logp": expected}))


def test_best_other_token_producer_equals_token_logprobs_with_top_other(student):
    seqs = _sequences(shared=False)
    tb = collate(seqs, PAD, packed=True)
    produced = BestOtherToken(chunk_size=CHUNK)(Recording(student), seqs, tb)
    assert produced.keys() == BestOtherToken.provides == {"logp", "logp_top_other"}
    logp, top_other = token_logprobs_with_top_other(student, tb, CHUNK)
    _assert_same(_with_grads(student, produced), _with_grads(student, {"logp": logp, "logp_top_other": top_other}))


@pytest.mark.parametrize("k", [None, 5])
def test_teacher_support_producer_equals_distill_fields(student, teacher, k):
    seqs = _sequences(shared=False)
    tb = collate(seqs, PAD)
    produced = TeacherSupport(teacher=teacher, k=k, chunk_size=CHUNK, temperature=0.7)(Recording(student), seqs, tb)
    expected = distill_fields(student, teacher, tb, k=k, chunk_size=CHUNK, temperature=0.7)
    assert produced.keys() - {"logp"} == expected.keys() <= TeacherSupport.provides
    _assert_same(_with_grads(student, produced),
                 _with_grads(student, {"logp": expected["student_logp_target"], **expected}))


def test_choose_producer_picks_the_first_that_covers_what_is_required(teacher):
    plain, hinge = TokenLogprobs(CHUNK, PAD), BestOtherToken(CHUNK)
    support = TeacherSupport(teacher, None, CHUNK, 1.0)
    table = [plain, hinge, support]
    assert choose_producer(frozenset({"logp", "mask", "logp_ref", "reward"}), table) is plain
    assert choose_producer(frozenset(), table) is plain
    assert choose_producer(frozenset({"logp", "logp_top_other", "sign"}), table) is hinge
    assert choose_producer(frozenset({"logp", "teacher_logp_topk", "student_logp_topk"}), table) is support
    assert choose_producer(frozenset({"logp", "teacher_logp_topk"}), [support, plain]) is support
    assert choose_producer(frozenset({"logp", "teacher_logp_topk"}), [plain]) is plain   # the rest comes from elsewhere
    with pytest.raises(ValueError, match="logp_top_other, teacher_logp_topk"):
        choose_producer(frozenset({"logp_top_other", "teacher_logp_topk"}), table)
    with pytest.raises(ValueError, match="at least one"):
        choose_producer(frozenset({"logp"}), [])


def test_produced_fields_and_provides():
    assert PRODUCED_FIELDS == {"logp", "logp_top_other"} | DISTILL_FIELDS
    assert all("logp" in p.provides for p in (TokenLogprobs, BestOtherToken, TeacherSupport))
