"""Teacher support for distillation: the teacher's top-k, the student's log-probs at that support, ``distill_fields``.

Per completion token t of sequence b (laid out by a ``TokenBatch``, as in ``token_logprobs``), with z
the model's logits at the position that predicts it (after the architecture's logit transform) and
temperature τ:

    log p(v) = z_v/τ − logsumexp(z/τ)                       (normalised over the FULL vocabulary)

``teacher_topk``      the teacher's k largest log p(v), sorted descending, and their indices S (no grad).
``student_logprobs_at`` the student's log p(v) at v ∈ S (with grad), and optionally
                      rest   = log Σ_{v ∉ S} p(v)            (the mass outside the support, as one bucket)
                      tail   = log Σ_{v ∉ S ∪ {y_t}} p(v)    (outside the support and the token y_t)
                      target = log p(y_t)                    (the completion token, = ``token_logprobs``)
                      computed exactly per chunk (masked logsumexp, no 1 − Σ cancellation).
k = None means the full vocabulary: values are [B, T, V] in vocabulary order and indices are None.
Both run chunked over completion tokens (``logprobs.readout``); outputs are [B, T, k].

``distill_fields(student, teacher, tb, k, chunk_size)`` returns the ``Batch.extra`` fields every
distillation objective in ``unigrad.methods.distill`` reads (see its docstring).
"""
from __future__ import annotations

import torch
from torch import Tensor

from unigrad.logprobs.readout import body_and_head, check_args, chunked, completion_states, scatter, tempered
from unigrad.tokens import TokenBatch

# Batch.extra fields produced by ``distill_fields``.
DISTILL_FIELDS = frozenset({
    "student_logp_topk", "teacher_logp_topk", "student_logp_rest", "teacher_logp_rest",
    "student_logp_tail", "student_logp_target", "teacher_logp_target", "target_in_topk", "topk_indices",
})


def support_logprobs(logits: Tensor, indices: Tensor | None, target: Tensor | None = None,
                     temperature: float = 1.0) -> dict[str, Tensor]:
    """From logits [N, V] (differentiable): ``topk`` = log p at ``indices`` [N, k] (all V when None),
    ``rest`` = log Σ_{v∉S} p(v), and with ``target`` [N]: ``target`` = log p(y), ``tail`` = log Σ_{v∉S∪{y}} p(v).
    The pure function under every chunk; identity tests use it to go from logits to the objectives' inputs."""
    logits = tempered(logits, temperature)
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
    (long), under ``torch.inference_mode()``. ``k = None`` (or k ≥ V): the full vocabulary, ``values``
    [B, T, V] in vocabulary order and ``indices`` None. Positions where ``completion_mask`` is 0 hold 0.
    With ``return_extras``, a third output: a dict of [B, T] tensors, ``rest`` = log Σ_{v∉S} p(v)
    (exact masked logsumexp; −inf on the full vocabulary and where masked) and ``target`` = log p(y_t).
    Outputs are ordinary (not inference) tensors."""
    check_args(chunk_size, temperature)
    with torch.inference_mode():
        states = completion_states(model, tb)
        full = k is None or k >= states.vocab_size

        def chunk(logits: Tensor, target: Tensor):
            indices = None if full else torch.topk(logits, k, dim=-1, sorted=True).indices
            out = support_logprobs(logits, indices, target, temperature)
            return (out["topk"], out["rest"], out["target"]) + (() if full else (indices,))

        columns = chunked(chunk, states, chunk_size=chunk_size)
        values = scatter(states.sel, columns[0])
        indices = None if full else scatter(states.sel, columns[3])
        rest, target_lp = scatter(states.sel, columns[1], float("-inf")), scatter(states.sel, columns[2])
    # clone outside inference mode: ordinary tensors, usable in autograd-recorded code
    values, indices = values.clone(), None if indices is None else indices.clone()
    if not return_extras:
        return values, indices
    return values, indices, {"rest": rest.clone(), "target": target_lp.clone()}


def student_logprobs_at(model, tb: TokenBatch, indices: Tensor | None, chunk_size: int = 1024,
                        temperature: float = 1.0, return_extras: bool = False):
    """The student's log-probs [B, T, k] at ``indices`` [B, T, k] (the teacher's support; None: the full
    vocabulary, [B, T, V]), normalised over the full vocabulary, WITH gradient. Masked positions hold 0.

    With ``return_extras``, also a dict of [B, T] tensors (with gradient): ``rest`` = log Σ_{v∉S} p(v),
    ``tail`` = log Σ_{v∉S∪{y_t}} p(v), ``target`` = log p(y_t) (−inf for rest/tail on the full vocabulary;
    0 where masked)."""
    check_args(chunk_size, temperature)
    states = completion_states(model, tb)
    keys = ("topk", "rest", "target", "tail") if return_extras else ("topk",)

    def chunk(logits: Tensor, target: Tensor, support: Tensor | None):
        out = support_logprobs(logits, support, target if return_extras else None, temperature)
        return tuple(out[key] for key in keys)

    support = None if indices is None else indices.to(states.hidden.device)[states.sel]
    columns = dict(zip(keys, chunked(chunk, states, support, chunk_size=chunk_size)))
    topk = scatter(states.sel, columns.pop("topk"))
    if not return_extras:
        return topk
    return topk, {name: scatter(states.sel, column) for name, column in columns.items()}


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
    v_student, v_teacher = (body_and_head(m)[1].weight.shape[0] for m in (student, teacher))
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
