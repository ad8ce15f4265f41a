"""The distribution engine for distillation: teacher top-k, student log-probs at the teacher's support.

Per completion token t of sequence b (laid out by a ``TokenBatch``, as in ``policy.token_logprobs``),
with z the model's logits at the position that predicts it (after the architecture's logit transform)
and temperature τ:

    log p(v) = z_v/τ − logsumexp(z/τ)                       (normalised over the FULL vocabulary)

``teacher_topk``      the teacher's k largest log p(v), sorted descending, and their indices S (no grad).
``student_logprobs_at`` the student's log p(v) at v ∈ S (with grad), and optionally
                      rest   = log Σ_{v ∉ S} p(v)            (the mass outside the support, as one bucket)
                      tail   = log Σ_{v ∉ S ∪ {y_t}} p(v)    (outside the support and the token y_t)
                      target = log p(y_t)                    (the completion token, = ``token_logprobs``)
                      computed exactly per chunk (masked logsumexp, no 1 − Σ cancellation).
k = None means the full vocabulary: values are [B, T, V] in vocabulary order and indices are None.

Memory: as ``policy.token_logprobs``, the body runs once; the vocabulary projection runs over chunks of
``chunk_size`` completion tokens (under activation checkpointing for the student), so full-vocabulary
logits exist for at most one chunk at a time; outputs are [B, T, k].

``distill_fields(student, teacher, tb, k, chunk_size)`` returns the ``Batch.extra`` fields every
distillation objective in ``unigrad.methods.distill`` reads (see its docstring).
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from unigrad.policy import _body_and_head, check_engine_args, completion_states, scatter
from unigrad.tokens import TokenBatch

# Batch.extra fields produced by ``distill_fields`` (the loop calls it when an objective requires any).
DISTILL_FIELDS = frozenset({
    "student_logp_topk", "teacher_logp_topk", "student_logp_rest", "teacher_logp_rest",
    "student_logp_tail", "student_logp_target", "teacher_logp_target", "target_in_topk", "topk_indices",
})


def support_logprobs(logits: Tensor, indices: Tensor | None, target: Tensor | None = None,
                     temperature: float = 1.0) -> dict[str, Tensor]:
    """From logits [N, V] (differentiable): ``topk`` = log p at ``indices`` [N, k] (all V when None),
    ``rest`` = log Σ_{v∉S} p(v), and with ``target`` [N]: ``target`` = log p(y), ``tail`` = log Σ_{v∉S∪{y}} p(v).
    The pure function under every chunk; identity tests use it to go from logits to the objectives' inputs."""
    if temperature != 1.0:
        logits = logits / temperature
    lse = torch.logsumexp(logits, dim=-1, keepdim=True)
    out = {}
    if indices is None:
        out["topk"] = logits - lse
        out["rest"] = torch.full_like(lse[:, 0], float("-inf"))
    else:
        out["topk"] = logits.gather(-1, indices) - lse
        outside = logits.scatter(-1, indices, float("-inf"))
        out["rest"] = torch.logsumexp(outside, dim=-1) - lse[:, 0]
    if target is not None:
        out["target"] = logits.gather(-1, target[:, None])[:, 0] - lse[:, 0]
        if indices is None:
            out["tail"] = torch.full_like(lse[:, 0], float("-inf"))
        else:
            outside = outside.scatter(-1, target[:, None], float("-inf"))
            out["tail"] = torch.logsumexp(outside, dim=-1) - lse[:, 0]
    return out


def teacher_topk(model, tb: TokenBatch, k: int | None, chunk_size: int = 1024, temperature: float = 1.0,
                 return_extras: bool = False):
    """The teacher's top-k log-probs ``values`` [B, T, k] (sorted descending) and ``indices`` [B, T, k]
    (long), under ``torch.inference_mode()``, chunked over completion tokens (full-vocabulary logits exist
    for one chunk at a time). ``k = None`` (or k ≥ V): the full vocabulary, ``values`` [B, T, V] in
    vocabulary order and ``indices`` None. Positions where ``completion_mask`` is 0 hold 0.
    With ``return_extras``, a third output: a dict of [B, T] tensors, ``rest`` = log Σ_{v∉S} p(v)
    (exact masked logsumexp; −inf on the full vocabulary and where masked) and ``target`` = log p(y_t).
    Outputs are ordinary (not inference) tensors."""
    check_engine_args(chunk_size, temperature)
    with torch.inference_mode():
        h, target, sel, head, transform, dtype = completion_states(model, tb)
        pieces = []
        vocab = head.weight.shape[0]
        full = k is None or k >= vocab
        for i in range(0, h.shape[0], chunk_size):
            logits = transform(head(h[i:i + chunk_size])).to(dtype)
            indices = None if full else torch.topk(logits, k, dim=-1, sorted=True).indices
            out = support_logprobs(logits, indices, target[i:i + chunk_size], temperature)
            pieces.append((out["topk"], out["rest"], out["target"])
                          + (() if full else (indices,)))
        if not pieces:
            width = vocab if full else k
            pieces = [(h.new_zeros(0, width, dtype=dtype), h.new_zeros(0, dtype=dtype), h.new_zeros(0, dtype=dtype))
                      + (() if full else (torch.zeros(0, k, dtype=torch.long, device=h.device),))]
        columns = [torch.cat(col) for col in zip(*pieces)]
        values = scatter(sel, columns[0])
        indices = None if full else scatter(sel, columns[3])
        rest, target_lp = scatter(sel, columns[1], float("-inf")), scatter(sel, columns[2])
    # clone outside inference mode: ordinary tensors, usable in autograd-recorded code
    values, indices = values.clone(), None if indices is None else indices.clone()
    if not return_extras:
        return values, indices
    return values, indices, {"rest": rest.clone(), "target": target_lp.clone()}


def _chunk_support(head, transform, temperature, dtype, with_target, h, indices, target):
    logits = transform(head(h)).to(dtype)
    out = support_logprobs(logits, indices, target if with_target else None, temperature)
    keys = ("topk", "rest", "target", "tail") if with_target else ("topk", "rest")
    return tuple(out[key] for key in keys)


def student_logprobs_at(model, tb: TokenBatch, indices: Tensor | None, chunk_size: int = 1024,
                        temperature: float = 1.0, return_extras: bool = False):
    """The student's log-probs [B, T, k] at ``indices`` [B, T, k] (the teacher's support; None: the full
    vocabulary, [B, T, V]), normalised over the full vocabulary, WITH gradient, chunked under activation
    checkpointing like ``policy.token_logprobs``. Masked positions hold 0.

    With ``return_extras``, also a dict of [B, T] tensors (with gradient): ``rest`` = log Σ_{v∉S} p(v),
    ``tail`` = log Σ_{v∉S∪{y_t}} p(v), ``target`` = log p(y_t) (−inf for rest/tail on the full vocabulary;
    0 where masked)."""
    check_engine_args(chunk_size, temperature)
    h, target, sel, head, transform, dtype = completion_states(model, tb)
    idx = None if indices is None else indices.to(h.device)[sel]
    use_ckpt = torch.is_grad_enabled() and (h.requires_grad or any(p.requires_grad for p in head.parameters()))
    pieces = []
    for i in range(0, h.shape[0], chunk_size):
        args = (head, transform, float(temperature), dtype, bool(return_extras), h[i:i + chunk_size],
                None if idx is None else idx[i:i + chunk_size], target[i:i + chunk_size])
        pieces.append(checkpoint(_chunk_support, *args, use_reentrant=False) if use_ckpt else _chunk_support(*args))
    if not pieces:
        width = indices.shape[-1] if indices is not None else head.weight.shape[0]
        pieces = [(h.new_zeros(0, width, dtype=dtype),) + tuple(h.new_zeros(0, dtype=dtype)
                                                                 for _ in range(3 if return_extras else 1))]
    columns = [torch.cat(col) for col in zip(*pieces)]
    topk = scatter(sel, columns[0])
    if not return_extras:
        return topk
    names = ("rest", "target", "tail")
    return topk, {name: scatter(sel, col) for name, col in zip(names, columns[1:])}


def student_logprobs_full(model, tb: TokenBatch, chunk_size: int = 1024, temperature: float = 1.0) -> Tensor:
    """The student's full-vocabulary log-probs [B, T, V] with gradient (0 where masked)."""
    return student_logprobs_at(model, tb, None, chunk_size, temperature)


def distill_fields(student, teacher, tb: TokenBatch, k: int | None = None, chunk_size: int = 1024,
                   temperature: float = 1.0) -> dict[str, Tensor]:
    """Every ``Batch.extra`` field the distillation objectives read, from one teacher pass (no grad) and
    one student pass (with grad). S = the teacher's top-k per token (k None: the full vocabulary).

        teacher_logp_topk   [B, T, k]  teacher log p at S (sorted descending; vocabulary order if full)
        student_logp_topk   [B, T, k]  student log p at S (grad)
        teacher_logp_rest   [B, T]     teacher log-mass outside S (−inf when S is the full vocabulary)
        student_logp_rest   [B, T]     student log-mass outside S (grad)
        student_logp_tail   [B, T]     student log-mass outside S ∪ {y_t} (grad; PLD)
        student_logp_target [B, T]     student log p(y_t) (grad) — the same as ``token_logprobs``: the
                                       loop may use it as ``Batch.logp`` and skip a second student pass
        teacher_logp_target [B, T]     teacher log p(y_t)
        target_in_topk      [B, T, k]  bool, S's entry equal to y_t
        topk_indices        [B, T, k]  long, S (absent when S is the full vocabulary)
    Both distributions are at ``temperature``. Masked positions hold 0 (the teacher's rest −inf); the
    objectives never read them. Teacher and student must share the tokenizer and the vocabulary size."""
    v_student, v_teacher = (_body_and_head(m)[1].weight.shape[0] for m in (student, teacher))
    if v_student != v_teacher:
        raise ValueError(f"teacher and student vocabularies differ ({v_teacher} vs {v_student} output rows); "
                         "distillation here needs one shared tokenizer and vocabulary size")
    t_values, t_indices, t_extras = teacher_topk(teacher, tb, k, chunk_size, temperature, return_extras=True)
    s_values, extras = student_logprobs_at(student, tb, t_indices, chunk_size, temperature, return_extras=True)
    device, dtype = s_values.device, s_values.dtype
    mask = tb.completion_mask.to(device) > 0
    targets = tb.input_ids.to(device)[tb.completion_row.to(device), tb.completion_col.to(device)]   # [B, T]
    if t_indices is None:
        in_topk = torch.nn.functional.one_hot(targets, t_values.shape[-1]).bool()
    else:
        t_indices = t_indices.to(device)
        in_topk = t_indices == targets[..., None]
    fields = {
        "teacher_logp_topk": t_values.to(device, dtype), "student_logp_topk": s_values,
        "teacher_logp_rest": t_extras["rest"].to(device, dtype), "student_logp_rest": extras["rest"],
        "student_logp_tail": extras["tail"], "student_logp_target": extras["target"],
        "teacher_logp_target": t_extras["target"].to(device, dtype), "target_in_topk": in_topk & mask[..., None],
    }
    if t_indices is not None:
        fields["topk_indices"] = t_indices
    return fields


__all__ = ["DISTILL_FIELDS", "distill_fields", "student_logprobs_at", "student_logprobs_full",
           "support_logprobs", "teacher_topk"]
