"""One forward of the transformer body and the one chunked read-out of the LM head every log-prob function uses.

``completion_states(model, tb)`` runs the body once over a ``TokenBatch`` and keeps only the N hidden
states that predict completion tokens (``Completions``); ``chunked(fn, states, ...)`` applies
``fn(logits, target, ...)`` to the full-vocabulary logits of ``chunk_size`` of them at a time, so
full-vocabulary logits exist for at most one chunk in the forward pass and in the backward pass:

    logits = transform(lm_head(h[row, col − 1]))      (the architecture's logit transform, compute dtype)

The checkpoint rule (one place): with gradients and more than one chunk, each chunk runs under
activation checkpointing (only its hidden states are kept; its logits are recomputed in backward).
One chunk is not checkpointed: its logits are the only full-vocabulary tensor either way.

Packing: sequences packed into one row have position ids restarting at 0. transformers (>= 4.54,
``masking_utils.find_packed_sequence_indices``) detects this when ``attention_mask`` is None and
builds a block-diagonal causal mask, so attention never crosses a sequence boundary; with older
versions we pass an explicit 4D block-diagonal causal mask built from ``seq_id`` (eager / sdpa).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from unigrad.tokens import TokenBatch

try:  # transformers >= 4.54 detects packed rows from restarting position ids
    from transformers.masking_utils import find_packed_sequence_indices as _find_packed  # noqa: F401
    _HF_DETECTS_PACKING = True
except Exception:  # pragma: no cover - depends on the installed transformers
    _HF_DETECTS_PACKING = False


# ------------------------------------------------------------------------------- model plumbing

def unwrap_peft(model):
    """The base model under a peft wrapper (the model itself when it is not one)."""
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover
        return model
    return model.get_base_model() if isinstance(model, PeftModel) else model


def body_and_head(model):
    """The transformer body (returns hidden states), the output projection and the config of a causal LM.

    Works on peft-wrapped models (adapters injected into the body / head stay active).
    """
    base = unwrap_peft(model)
    head = base.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(base).__name__} has no output embeddings (lm_head); is it a causal LM?")
    body = None
    get_decoder = getattr(base, "get_decoder", None)
    if callable(get_decoder):
        try:
            body = get_decoder()
        except Exception:
            body = None
    if body is None or body is base:
        body = getattr(base, getattr(base, "base_model_prefix", "model"), None)
    if body is None or body is base:
        raise ValueError(f"cannot find the decoder body of {type(base).__name__}")
    return body, head, base.config


def block_causal_mask(seq_id: Tensor, dtype: torch.dtype) -> Tensor:
    """Additive 4D mask [R, 1, L, L]: 0 where query i may attend key j (same sequence, j <= i), else -inf-ish.

    Padding positions (seq_id -1) attend only to themselves so no row is fully masked.
    """
    L = seq_id.shape[1]
    causal = torch.ones(L, L, dtype=torch.bool, device=seq_id.device).tril()
    same = seq_id[:, :, None] == seq_id[:, None, :]
    pad_self = (seq_id[:, :, None] < 0) & torch.eye(L, dtype=torch.bool, device=seq_id.device)
    allowed = ((same & (seq_id[:, :, None] >= 0)) | pad_self) & causal
    mask = torch.zeros(allowed.shape, dtype=dtype, device=seq_id.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


def attention_mask(config, tb: TokenBatch, dtype: torch.dtype, explicit: bool | None = None) -> Tensor | None:
    """The attention mask to pass to the body (None: plain causal, or packing detected by transformers).

    Padded rows are right-padded with contiguous position ids, so plain causal attention is exact for
    every real token. Packed rows need a block-diagonal causal mask: transformers builds it from the
    restarting position ids when the mask is None; otherwise (``explicit``) we build it from seq_id.
    """
    if not tb.packed:
        return None
    if explicit is None:
        impl = str(getattr(config, "_attn_implementation", "") or "")
        explicit = not _HF_DETECTS_PACKING and not impl.startswith("flash")
    if not explicit:
        return None
    return block_causal_mask(tb.seq_id, dtype)


def logit_transform(config) -> Callable[[Tensor], Tensor]:
    """Architecture-specific changes between lm_head and the softmax (final_logit_softcapping, scales)."""
    softcap = getattr(config, "final_logit_softcapping", None)
    scale = getattr(config, "logit_scale", None)              # Cohere: logits * logit_scale
    divide = getattr(config, "logits_scaling", None)          # Granite: logits / logits_scaling

    def transform(logits: Tensor) -> Tensor:
        if scale is not None:
            logits = logits * scale
        if divide is not None:
            logits = logits / divide
        if softcap is not None:
            logits = torch.tanh(logits / softcap) * softcap
        return logits

    return transform


def compute_dtype(model) -> torch.dtype:
    """float32 for half-precision models, else the model's dtype: the dtype logits are read out in."""
    return torch.promote_types(next(model.parameters()).dtype, torch.float32)


# ----------------------------------------------------------------------------- the one read-out

@dataclass(frozen=True, eq=False)
class Completions:
    """The N hidden states that predict completion tokens and how to read them out.

    hidden [N, H], target [N] (the completion tokens), sel [B, T] bool (where the N tokens sit in the
    ``Batch`` layout), and the LM head, the logit transform and the compute dtype."""
    hidden: Tensor
    target: Tensor
    sel: Tensor
    head: torch.nn.Module
    transform: Callable[[Tensor], Tensor]
    dtype: torch.dtype

    def logits(self, h: Tensor) -> Tensor:
        """transform(lm_head(h)) in the compute dtype: [n, V], before any temperature."""
        return self.transform(self.head(h)).to(self.dtype)

    @property
    def vocab_size(self) -> int:
        return self.head.weight.shape[0]


def completion_states(model, tb: TokenBatch, explicit_mask: bool | None = None) -> Completions:
    """One forward pass of the transformer body over ``tb``; only the states predicting its completion
    tokens are kept (they alone ever reach the LM head)."""
    body, head, config = body_and_head(model)
    param = next(model.parameters())
    tb = tb.to(param.device)
    attn = attention_mask(config, tb, param.dtype if param.is_floating_point() else torch.float32, explicit_mask)
    out = body(input_ids=tb.input_ids, position_ids=tb.position_ids, attention_mask=attn, use_cache=False)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]   # [R, L, H]
    sel = tb.completion_mask > 0                                     # [B, T]
    rows, cols = tb.completion_row[sel], tb.completion_col[sel]      # [N]
    return Completions(hidden[rows, cols - 1], tb.input_ids[rows, cols], sel, head, logit_transform(config),
                       compute_dtype(model))


def checkpoints_chunks(states: Completions, chunk_size: int) -> bool:
    """The checkpoint rule: with gradients to keep and more than one chunk."""
    return (torch.is_grad_enabled() and states.hidden.shape[0] > chunk_size
            and (states.hidden.requires_grad or any(p.requires_grad for p in states.head.parameters())))


def chunked(fn, states: Completions, *per_token: Tensor | None, chunk_size: int) -> tuple[Tensor, ...]:
    """``fn(logits [n, V], target [n], *per_token chunks)`` → a tuple of [n, ...] tensors, over chunks of
    ``chunk_size`` completion tokens, concatenated along the tokens (``per_token``: [N, ...] tensors cut
    like the states; None passes through). With no completion tokens ``fn`` sees one empty chunk."""
    def piece(h: Tensor, target: Tensor, *columns):
        return tuple(fn(states.logits(h), target, *columns))

    use_checkpoint = checkpoints_chunks(states, chunk_size)
    pieces = []
    for i in range(0, max(states.hidden.shape[0], 1), chunk_size):
        cut = slice(i, i + chunk_size)
        args = (states.hidden[cut], states.target[cut], *(None if c is None else c[cut] for c in per_token))
        pieces.append(checkpoint(piece, *args, use_reentrant=False) if use_checkpoint else piece(*args))
    return tuple(torch.cat(column) for column in zip(*pieces))


def scatter(sel: Tensor, values: Tensor, fill: float = 0.0) -> Tensor:
    """[N, ...] values of the selected tokens → [B, T, ...], ``fill`` elsewhere."""
    out = values.new_full((*sel.shape, *values.shape[1:]), fill)
    return out.index_put(sel.nonzero(as_tuple=True), values)


def tempered(logits: Tensor, temperature: float) -> Tensor:
    """logits / τ (the same tensor when τ = 1)."""
    return logits / temperature if temperature != 1.0 else logits


def check_args(chunk_size: int, temperature: float) -> None:
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


__all__ = ["Completions", "attention_mask", "block_causal_mask", "body_and_head", "check_args", "checkpoints_chunks",
           "chunked", "completion_states", "compute_dtype", "logit_transform", "scatter", "tempered", "unwrap_peft"]
