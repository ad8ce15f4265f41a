"""data.packing.collate layouts and logprobs: chunked, padding-free per-token log-probs (tiny random model only)."""
import random

import pytest
import torch

from unigrad.models import tiny_random_model, tiny_tokenizer
from unigrad.data.packing import collate
from unigrad.logprobs import reference_logprobs, token_logprobs
from unigrad.logprobs.readout import block_causal_mask
from unigrad.tokens import Sequence

VOCAB = 260


@pytest.fixture(scope="module")
def model64():
    m = tiny_random_model(seed=1, dtype=torch.float64)
    # Non-trivial head/embeddings so log-probs are far from uniform.
    return m


def _sequences(seed=0, n=5, vocab=VOCAB):
    rng = random.Random(seed)
    seqs = []
    for i in range(n):
        p = rng.randint(1, 9)
        c = rng.randint(0 if i == n - 1 else 1, 11)  # the last one may have an empty completion
        seqs.append(Sequence(tuple(rng.randrange(vocab) for _ in range(p)),
                             tuple(rng.randrange(vocab) for _ in range(c)), group=i // 2, sign=1.0 if i % 2 == 0 else -1.0))
    return seqs


def _naive(model, seqs):
    """Each sequence alone: full logits -> log_softmax -> gather; [B, T] zero-padded."""
    T = max(len(s.completion_ids) for s in seqs)
    rows = []
    for s in seqs:
        ids = torch.tensor([s.prompt_ids + s.completion_ids])
        row = torch.zeros(T, dtype=torch.float64)
        if s.completion_ids:
            logits = model(input_ids=ids).logits[0].to(torch.float64)
            lp = torch.log_softmax(logits, -1)
            p, c = len(s.prompt_ids), len(s.completion_ids)
            tok = lp[p - 1:p - 1 + c].gather(-1, ids[0, p:p + c, None]).squeeze(-1)
            row = torch.cat([tok, torch.zeros(T - c, dtype=tok.dtype)])
        rows.append(row)
    return torch.stack(rows)


def _naive_padded(model, tb):
    """The same batch in one padded forward with full logits (attention mask all-ones, right padding)."""
    logits = model(input_ids=tb.input_ids, position_ids=tb.position_ids).logits
    lp = torch.log_softmax(logits, -1)
    nxt = lp[tb.completion_row, tb.completion_col - 1]                # [B, T, V]
    tgt = tb.input_ids[tb.completion_row, tb.completion_col]
    return nxt.gather(-1, tgt[..., None]).squeeze(-1) * tb.completion_mask.to(lp.dtype)


def _grads(model, fn):
    model.zero_grad(set_to_none=True)
    weights = torch.linspace(0.5, 1.5, 64, dtype=torch.float64)
    out = fn()
    loss = (out * weights[: out.shape[1]]).sum()
    loss.backward()
    g = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out.detach(), g


def _assert_grads_close(g1, g2, atol):
    assert g1.keys() == g2.keys()
    for k in g1:
        torch.testing.assert_close(g1[k], g2[k], atol=atol, rtol=0, msg=lambda m: f"{k}: {m}")


# ----------------------------------------------------------------------------------------- collate

def test_collate_padded_layout():
    seqs = [Sequence((1, 2), (3, 4, 5)), Sequence((6,), (7,))]
    tb = collate(seqs, pad_id=0)
    assert not tb.packed and tb.input_ids.shape == (2, 5)
    assert tb.input_ids.tolist() == [[1, 2, 3, 4, 5], [6, 7, 0, 0, 0]]
    assert tb.seq_id.tolist() == [[0, 0, 0, 0, 0], [1, 1, -1, -1, -1]]
    assert tb.position_ids.tolist() == [[0, 1, 2, 3, 4], [0, 1, 2, 3, 4]]
    assert tb.completion_mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    got = tb.input_ids[tb.completion_row, tb.completion_col] * tb.completion_mask.long()
    assert got.tolist() == [[3, 4, 5], [7, 0, 0]]


def test_collate_packed_layout_first_fit_decreasing():
    seqs = [Sequence((1,), (2,)), Sequence((3, 4, 5), (6, 7)), Sequence((8,), (9, 10)), Sequence((11, 12), (13,))]
    tb = collate(seqs, pad_id=0, packed=True, max_tokens_per_row=6)
    # lengths 2, 5, 3, 3 -> FFD: row0 = [seq1 (5)], row1 = [seq2 (3), seq3 (3)], row0 += seq0? no (5+2>6) -> row2
    assert tb.packed and tb.input_ids.shape[1] <= 6
    assert tb.input_ids.shape[0] == 3
    for b, s in enumerate(seqs):
        full = s.prompt_ids + s.completion_ids
        r = int(tb.completion_row[b, 0])
        cols = (tb.seq_id[r] == b).nonzero().flatten()
        assert tb.input_ids[r, cols].tolist() == list(full)
        assert tb.position_ids[r, cols].tolist() == list(range(len(full)))
        c = len(s.completion_ids)
        assert tb.input_ids[tb.completion_row[b, :c], tb.completion_col[b, :c]].tolist() == list(s.completion_ids)
    assert tb.group.tolist() == [0, 0, 0, 0] and tb.sign.dtype == torch.float32


def test_collate_packed_default_capacity_and_errors():
    seqs = _sequences(n=8)
    tb = collate(seqs, pad_id=0, packed=True)
    assert tb.input_ids.shape[1] == max(s.length for s in seqs)
    assert tb.input_ids.shape[0] < len(seqs)
    assert int((tb.seq_id >= 0).sum()) == sum(s.length for s in seqs)
    with pytest.raises(ValueError, match="max_tokens_per_row"):
        collate(seqs, pad_id=0, packed=True, max_tokens_per_row=3)
    with pytest.raises(ValueError, match="empty prompt"):
        collate([Sequence((), (1, 2))], pad_id=0)


# -------------------------------------------------------------------------------------- log-probs

def test_padded_matches_naive_values_and_grads(model64):
    seqs = _sequences(seed=3)
    tb = collate(seqs, pad_id=258)
    lp, g = _grads(model64, lambda: token_logprobs(model64, tb, chunk_size=4))
    ref, g_ref = _grads(model64, lambda: _naive_padded(model64, tb))
    assert lp.dtype == torch.float64 and lp.shape == tb.completion_mask.shape
    torch.testing.assert_close(lp, ref, atol=1e-10, rtol=0)
    _assert_grads_close(g, g_ref, atol=1e-10)
    # and each sequence alone
    torch.testing.assert_close(lp, _naive(model64, seqs).detach(), atol=1e-10, rtol=0)
    assert (lp[tb.completion_mask == 0] == 0).all()
    assert (lp[tb.completion_mask == 1] < 0).all()


@pytest.mark.parametrize("explicit", [None, True])
def test_packed_matches_padded(model64, explicit):
    seqs = _sequences(seed=5, n=7)
    padded = collate(seqs, pad_id=258)
    packed = collate(seqs, pad_id=258, packed=True, max_tokens_per_row=24)
    assert packed.input_ids.shape[0] < len(seqs)
    assert any(len(set(r.tolist()) - {-1}) > 1 for r in packed.seq_id)  # some row really holds several
    lp_pad, g_pad = _grads(model64, lambda: token_logprobs(model64, padded))
    lp_pack, g_pack = _grads(model64, lambda: token_logprobs(model64, packed, _explicit_mask=explicit))
    torch.testing.assert_close(lp_pack, lp_pad, atol=1e-10, rtol=0)
    _assert_grads_close(g_pack, g_pad, atol=1e-10)


def test_packing_without_mask_would_leak(model64):
    """Sanity check of the test above: plain causal attention over a packed row gives different values."""
    seqs = _sequences(seed=5, n=7)
    packed = collate(seqs, pad_id=258, packed=True, max_tokens_per_row=24)
    leaky = packed.__class__(**{**packed.__dict__, "position_ids": torch.arange(packed.input_ids.shape[1]).expand_as(packed.input_ids).clone()})
    with torch.no_grad():
        a = token_logprobs(model64, packed)
        b = token_logprobs(model64, leaky)
    assert (a - b).abs().max() > 1e-3


def test_block_causal_mask():
    seq_id = torch.tensor([[0, 0, 1, 1, 1, -1]])
    m = block_causal_mask(seq_id, torch.float32)[0, 0] == 0
    expect = torch.tensor([
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [0, 0, 1, 0, 0, 0],
        [0, 0, 1, 1, 0, 0],
        [0, 0, 1, 1, 1, 0],
        [0, 0, 0, 0, 0, 1],
    ], dtype=torch.bool)
    assert torch.equal(m, expect)


def test_chunk_sizes_identical(model64):
    seqs = _sequences(seed=7, n=6)
    tb = collate(seqs, pad_id=258, packed=True)
    results = [_grads(model64, lambda cs=cs: token_logprobs(model64, tb, chunk_size=cs)) for cs in (1, 7, 100_000)]
    for lp, g in results[1:]:
        torch.testing.assert_close(lp, results[0][0], atol=1e-12, rtol=0)
        _assert_grads_close(g, results[0][1], atol=1e-12)


def test_temperature(model64):
    seqs = _sequences(seed=8, n=3)
    tb = collate(seqs, pad_id=258)
    with torch.no_grad():
        lp = token_logprobs(model64, tb, temperature=0.7)
        logits = model64(input_ids=tb.input_ids).logits / 0.7
    ref = torch.log_softmax(logits, -1)[tb.completion_row, tb.completion_col - 1]
    ref = ref.gather(-1, tb.input_ids[tb.completion_row, tb.completion_col][..., None]).squeeze(-1) * tb.completion_mask.double()
    torch.testing.assert_close(lp, ref, atol=1e-10, rtol=0)


def test_reference_logprobs_inference_mode_and_float32():
    model = tiny_random_model(seed=2)
    seqs = _sequences(seed=9, n=4)
    tb = collate(seqs, pad_id=258, packed=True)
    ref = reference_logprobs(model, tb, chunk_size=5)
    assert not ref.requires_grad and not ref.is_inference() and ref.dtype == torch.float32
    with torch.inference_mode():
        inf = token_logprobs(model, tb)
    torch.testing.assert_close(ref, inf.clone())
    lp = token_logprobs(model, tb)
    assert lp.requires_grad
    torch.testing.assert_close(lp.detach(), ref, atol=1e-5, rtol=1e-5)
    (lp * ref).sum().backward()  # the reference is usable inside a loss


def test_peft_model():
    peft = pytest.importorskip("peft")
    model = tiny_random_model(seed=3, dtype=torch.float64)
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "lm_head"], lora_dropout=0.0,
                          init_lora_weights=False)
    pm = peft.get_peft_model(model, cfg)
    seqs = _sequences(seed=10, n=4)
    tb = collate(seqs, pad_id=258, packed=True)
    lp = token_logprobs(pm, tb, chunk_size=3)
    with torch.no_grad():
        logits = pm(input_ids=collate(seqs, pad_id=258).input_ids).logits
    pad = collate(seqs, pad_id=258)
    ref = torch.log_softmax(logits, -1)[pad.completion_row, pad.completion_col - 1]
    ref = ref.gather(-1, pad.input_ids[pad.completion_row, pad.completion_col][..., None]).squeeze(-1) * pad.completion_mask.double()
    torch.testing.assert_close(lp.detach(), ref, atol=1e-10, rtol=0)
    lp.sum().backward()
    lora_grads = [p.grad for n, p in pm.named_parameters() if "lora_" in n]
    assert lora_grads and all(g is not None and g.abs().sum() > 0 for g in lora_grads)
    assert all(p.grad is None for n, p in pm.named_parameters() if "lora_" not in n)


def test_tokenizer_sequences_roundtrip():
    tok = tiny_tokenizer()
    prompt = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    ids = tok(prompt + "yo<|im_end|>", add_special_tokens=False)["input_ids"]
    assert ids[0] == tok.convert_tokens_to_ids("<|im_start|>") and ids[-1] == tok.eos_token_id
    model = tiny_random_model(seed=0)
    tb = collate([Sequence(tuple(ids[:-3]), tuple(ids[-3:]))], pad_id=tok.pad_token_id)
    assert token_logprobs(model, tb).shape == (1, 3)


def test_full_vocab_logits_never_saved_and_recomputed_in_backward():
    model = tiny_random_model(seed=0)
    V = model.config.vocab_size
    seqs = [Sequence(tuple(range(1, 20)), tuple(range(20, 60))) for _ in range(4)]
    tb = collate(seqs, pad_id=258)
    saved = []

    def pack(t):
        saved.append(tuple(t.shape))
        return t

    calls = []
    handle = model.lm_head.register_forward_hook(lambda mod, inp, out: calls.append(tuple(out.shape)))
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            lp = token_logprobs(model, tb, chunk_size=16)
        n_chunks = -(-160 // 16)
        assert len(calls) == n_chunks and all(s[0] <= 16 for s in calls)
        assert not [s for s in saved if V in s], "vocabulary-sized tensors were saved for backward"
        lp.sum().backward()
        assert len(calls) == 2 * n_chunks  # each chunk's logits recomputed once in backward
    finally:
        handle.remove()
