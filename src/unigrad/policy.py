"""The one place logits become per-token log-probs.

``collate`` lays tokenised sequences out for one forward pass (padded, or packed padding-free) as a
``TokenBatch``; ``token_logprobs`` runs the model once and returns

    logp[b, t] = log softmax(lm_head(h[row, col - 1]) / temperature)[input_ids[row, col]]

for completion token t of sequence b sitting at ``(row, col) = (completion_row[b, t],
completion_col[b, t])``, and 0 where ``completion_mask`` is 0.

Memory: the transformer body runs once; only the hidden states that predict completion tokens are
gathered, and the vocabulary projection + log-softmax runs over chunks of ``chunk_size`` of them
under activation checkpointing, so full-vocabulary logits exist for at most one chunk at a time, in
the forward pass and in the backward pass.

Packing: sequences packed into one row have position ids restarting at 0. transformers (>= 4.54,
``masking_utils.find_packed_sequence_indices``) detects this when ``attention_mask`` is None and
builds a block-diagonal causal mask, so attention never crosses a sequence boundary; with older
versions we pass an explicit 4D block-diagonal causal mask built from ``seq_id`` (eager / sdpa).
"""
from __future__ import annotations

from typing import Sequence as _Seq

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from unigrad.tokens import Sequence, TokenBatch

try:  # transformers >= 4.54 detects packed rows from restarting position ids
    from transformers.masking_utils import find_packed_sequence_indices as _find_packed  # noqa: F401
    _HF_DETECTS_PACKING = True
except Exception:  # pragma: no cover - depends on the installed transformers
    _HF_DETECTS_PACKING = False


# --------------------------------------------------------------------------------------- collate

def collate(sequences: _Seq[Sequence], pad_id: int, packed: bool = False,
            max_tokens_per_row: int | None = None) -> TokenBatch:
    """Lay ``sequences`` out as a ``TokenBatch``.

    Padded (``packed=False``): row b is sequence b, right-padded with ``pad_id`` to the longest.
    Packed: sequences are concatenated into as few rows as first-fit decreasing finds, each row
    holding at most ``max_tokens_per_row`` tokens (default: the longest sequence); position ids
    restart at 0 at each sequence. Each sequence needs a non-empty prompt when its completion is
    non-empty (the first completion token is predicted from the last prompt token).
    """
    seqs = list(sequences)
    if not seqs:
        raise ValueError("collate needs at least one sequence")
    for i, s in enumerate(seqs):
        if s.completion_ids and not s.prompt_ids:
            raise ValueError(f"sequence {i} has an empty prompt; its first completion token has no context "
                             "(put at least a BOS token in the prompt)")
    lengths = [s.length for s in seqs]
    B = len(seqs)

    if packed:
        cap = max(lengths) if max_tokens_per_row is None else int(max_tokens_per_row)
        too_long = [i for i, n in enumerate(lengths) if n > cap]
        if too_long:
            raise ValueError(f"sequence {too_long[0]} has {lengths[too_long[0]]} tokens, more than "
                             f"max_tokens_per_row={cap}")
        rows: list[list[int]] = []
        used: list[int] = []
        for i in sorted(range(B), key=lambda i: -lengths[i]):  # stable: ties keep input order
            for r in range(len(rows)):
                if used[r] + lengths[i] <= cap:
                    rows[r].append(i)
                    used[r] += lengths[i]
                    break
            else:
                rows.append([i])
                used.append(lengths[i])
    else:
        rows = [[i] for i in range(B)]
        used = lengths[:]

    R, L = len(rows), max(max(used), 1)
    T = max(len(s.completion_ids) for s in seqs)
    input_ids = torch.full((R, L), int(pad_id), dtype=torch.long)
    position_ids = torch.zeros((R, L), dtype=torch.long)
    seq_id = torch.full((R, L), -1, dtype=torch.long)
    c_row = torch.zeros((B, T), dtype=torch.long)
    c_col = torch.zeros((B, T), dtype=torch.long)
    c_mask = torch.zeros((B, T), dtype=torch.float32)

    for r, members in enumerate(rows):
        start = 0
        for b in members:
            s = seqs[b]
            n, p, c = s.length, len(s.prompt_ids), len(s.completion_ids)
            input_ids[r, start:start + n] = torch.tensor(s.prompt_ids + s.completion_ids, dtype=torch.long)
            position_ids[r, start:start + n] = torch.arange(n)
            seq_id[r, start:start + n] = b
            c_row[b, :c] = r
            c_col[b, :c] = torch.arange(start + p, start + n)
            c_mask[b, :c] = 1.0
            start += n
        # Padding continues the last sequence's positions: it never starts a new "sequence" (so
        # transformers' packing detection ignores it), and under causal attention no real token sees it.
        last = int(position_ids[r, start - 1]) + 1 if start > 0 else 0
        position_ids[r, start:] = torch.arange(last, last + L - start)

    return TokenBatch(
        input_ids=input_ids,
        position_ids=position_ids,
        seq_id=seq_id,
        completion_row=c_row,
        completion_col=c_col,
        completion_mask=c_mask,
        group=torch.tensor([s.group for s in seqs], dtype=torch.long),
        sign=torch.tensor([s.sign for s in seqs], dtype=torch.float32),
        packed=bool(packed),
    )


# ------------------------------------------------------------------------------- model plumbing

def _unwrap_peft(model):
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover
        return model
    return model.get_base_model() if isinstance(model, PeftModel) else model


def _body_and_head(model):
    """The transformer body (returns hidden states) and the output projection of a causal LM.

    Works on peft-wrapped models (adapters injected into the body / head stay active).
    """
    base = _unwrap_peft(model)
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


def _block_causal_mask(seq_id: Tensor, dtype: torch.dtype) -> Tensor:
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


def _attention_mask(config, tb: TokenBatch, dtype: torch.dtype, explicit: bool | None = None) -> Tensor | None:
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
    return _block_causal_mask(tb.seq_id, dtype)


def _logit_transform(config):
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


def _chunk_logprobs(head, transform, temperature: float, compute_dtype: torch.dtype, h: Tensor, target: Tensor) -> Tensor:
    logits = transform(head(h)).to(compute_dtype)
    if temperature != 1.0:
        logits = logits / temperature
    return logits.gather(-1, target[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)


# ------------------------------------------------------------------------------------ log-probs

def completion_states(model, tb: TokenBatch, _explicit_mask: bool | None = None):
    """One forward pass of the transformer body; the hidden states that predict the completion tokens
    ([N, H], N = completion tokens of the batch), their targets [N], the [B, T] selection, the LM head,
    the model's logit transform and the compute dtype. Only these N states ever reach the LM head."""
    body, head, config = _body_and_head(model)
    param = next(model.parameters())
    tb = tb.to(param.device)
    compute_dtype = torch.promote_types(param.dtype, torch.float32)
    attn = _attention_mask(config, tb, param.dtype if param.is_floating_point() else torch.float32, _explicit_mask)
    out = body(input_ids=tb.input_ids, position_ids=tb.position_ids, attention_mask=attn, use_cache=False)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]   # [R, L, H]
    sel = tb.completion_mask > 0                                     # [B, T]
    rows, cols = tb.completion_row[sel], tb.completion_col[sel]      # [N]
    return hidden[rows, cols - 1], tb.input_ids[rows, cols], sel, head, _logit_transform(config), compute_dtype


def chunked(chunk_fn, h: Tensor, target: Tensor, head, transform, temperature: float, compute_dtype,
            chunk_size: int) -> Tensor:
    """``chunk_fn(head, transform, temperature, compute_dtype, h_chunk, target_chunk)`` over chunks of
    ``chunk_size`` positions, concatenated. With gradients and more than one chunk, each chunk is
    checkpointed: only its hidden states are kept and its full-vocabulary logits are recomputed in
    backward, so at most one chunk's logits exist at a time."""
    # One chunk is not checkpointed: its logits would be recomputed in backward for no saving (they are
    # the only full-vocabulary tensor either way, and nothing big is allocated between its forward and backward).
    use_ckpt = (torch.is_grad_enabled() and h.shape[0] > chunk_size
                and (h.requires_grad or any(p.requires_grad for p in head.parameters())))
    pieces = []
    for i in range(0, h.shape[0], chunk_size):
        args = (head, transform, float(temperature), compute_dtype, h[i:i + chunk_size], target[i:i + chunk_size])
        pieces.append(checkpoint(chunk_fn, *args, use_reentrant=False) if use_ckpt else chunk_fn(*args))
    return torch.cat(pieces) if pieces else h.new_zeros(0, dtype=compute_dtype)


def scatter(sel: Tensor, values: Tensor, fill: float = 0.0) -> Tensor:
    """[N, ...] values of the selected tokens → [B, T, ...], ``fill`` elsewhere."""
    out = values.new_full((*sel.shape, *values.shape[1:]), fill)
    return out.index_put(sel.nonzero(as_tuple=True), values)


def check_engine_args(chunk_size: int, temperature: float) -> None:
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def token_logprobs(model, tb: TokenBatch, chunk_size: int = 1024, temperature: float = 1.0,
                   _explicit_mask: bool | None = None) -> Tensor:
    """``logp[b, t]`` [B, T] of each completion token under ``model`` (0 where completion_mask is 0).

    Differentiable w.r.t. the model's parameters; also works under ``torch.inference_mode()``.
    The output is float32 for half-precision models, else the model's dtype.
    """
    check_engine_args(chunk_size, temperature)
    h, target, sel, head, transform, dtype = completion_states(model, tb, _explicit_mask)
    return scatter(sel, chunked(_chunk_logprobs, h, target, head, transform, temperature, dtype, chunk_size))


def shared_prompt_states(model, sequences: _Seq[Sequence], pad_id: int):
    """``completion_states`` for sequences that share prompts (a GRPO group, a DPO pair): each distinct
    prompt runs through the body once and its key/value cache serves every completion of that prompt,
    so a prompt of length P with n completions costs P body tokens instead of n·P. Gradients flow into
    the prompt through the shared cache. The same values as the forward of the sequences one by one;
    gradients equal up to rounding order (a prompt's gradients are summed before its backward, not after).

    Layout: distinct prompts left-padded (positions count real tokens only); completions right-padded
    and positioned after their prompt. The state predicting completion token 0 is the prompt's last
    state; token t ≥ 1 is predicted by the completion forward's state t − 1. The selection ``sel``
    is [B, C] with C the longest completion, as ``collate`` lays out ``completion_mask``."""
    body, head, config = _body_and_head(model)
    param = next(model.parameters())
    dev = param.device
    compute_dtype = torch.promote_types(param.dtype, torch.float32)
    first_of: dict[tuple, int] = {}
    owner = [first_of.setdefault(tuple(s.prompt_ids), len(first_of)) for s in sequences]
    prompts = list(first_of)
    if any(len(p) == 0 for p in prompts):
        raise ValueError("a sequence has an empty prompt; shared-prompt forward needs at least one prompt token")
    ids, att, pos = left_padded(prompts, pad_id, dev)
    out = body(input_ids=ids, attention_mask=att, position_ids=pos, use_cache=True)
    index = torch.tensor(owner, device=dev)
    try:
        cache = select_cache_rows(out.past_key_values, index)
    except TypeError as error:
        raise ValueError(f"{error}; this model's cache cannot be shared between sequences: set "
                         "train.share_prompts: false") from None
    last = out.last_hidden_state[:, -1][index]                                # per sequence

    B, C = len(sequences), max(1, max(len(s.completion_ids) for s in sequences))
    cids = torch.full((B, C), int(pad_id), dtype=torch.long)
    cmask = torch.zeros((B, C), dtype=torch.long)
    for b, s in enumerate(sequences):
        cids[b, :len(s.completion_ids)] = torch.tensor(s.completion_ids, dtype=torch.long)
        cmask[b, :len(s.completion_ids)] = 1
    cids, cmask = cids.to(dev), cmask.to(dev)
    cpos = pos[index, -1:] + 1 + torch.arange(C, device=dev)
    out = body(input_ids=cids, attention_mask=torch.cat([att[index], cmask], dim=1), position_ids=cpos,
               past_key_values=cache, use_cache=True)
    states = torch.cat([last[:, None], out.last_hidden_state[:, :-1]], dim=1)        # [B, C, H]
    sel = cmask > 0
    return states[sel], cids[sel], sel.cpu(), head, _logit_transform(config), compute_dtype


def left_padded(prompts, pad_id: int, device) -> tuple[Tensor, Tensor, Tensor]:
    """Prompts as one left-padded batch, ready for a prefill whose last column is every prompt's last
    token: input ids, attention mask (0 on padding) and position ids counting real tokens only."""
    P = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), P), int(pad_id), dtype=torch.long)
    att = torch.zeros((len(prompts), P), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, P - len(prompt):] = torch.tensor(list(prompt), dtype=torch.long)
        att[row, P - len(prompt):] = 1
    ids, att = ids.to(device), att.to(device)
    return ids, att, (att.cumsum(-1) - 1).clamp(min=0)


def repeat_cache_rows(cache, n: int):
    """A KV cache with each batch row repeated ``n`` times (row i → rows i·n … i·n + n − 1)."""
    if hasattr(cache, "batch_repeat_interleave"):
        cache.batch_repeat_interleave(n)
        return cache
    return _map_legacy(cache, lambda t: t.repeat_interleave(n, dim=0))


def select_cache_rows(cache, index: Tensor):
    """A KV cache whose row i is row ``index[i]`` of ``cache`` (rows may repeat)."""
    if hasattr(cache, "batch_select_indices"):
        cache.batch_select_indices(index)
        return cache
    return _map_legacy(cache, lambda t: t[index])


def _map_legacy(cache, fn):
    if isinstance(cache, (tuple, list)):
        return type(cache)(_map_legacy(c, fn) for c in cache)
    if isinstance(cache, Tensor):
        return fn(cache)
    raise TypeError(f"cannot repeat/select the rows of a {type(cache).__name__} KV cache")


def shares_prompts(sequences: _Seq[Sequence]) -> bool:
    """Whether some sequences have the same prompt (then ``shared_prompt_logprobs`` saves work)."""
    return len({tuple(s.prompt_ids) for s in sequences}) < len(sequences)


def shared_prompt_logprobs(model, sequences: _Seq[Sequence], pad_id: int, chunk_size: int = 1024,
                           temperature: float = 1.0) -> Tensor:
    """``token_logprobs`` of ``collate(sequences)`` computed with each distinct prompt forwarded once
    (``shared_prompt_states``): the same [B, T] values, T = the longest completion."""
    check_engine_args(chunk_size, temperature)
    h, target, sel, head, transform, dtype = shared_prompt_states(model, sequences, pad_id)
    return scatter(sel.to(h.device), chunked(_chunk_logprobs, h, target, head, transform, temperature, dtype, chunk_size))


def reference_logprobs(model, tb: TokenBatch, chunk_size: int = 1024, temperature: float = 1.0) -> Tensor:
    """``token_logprobs`` under ``torch.inference_mode()``: a detached tensor (e.g. for a reference model).

    The returned tensor is an ordinary tensor (not an inference tensor), safe to use in a loss.
    """
    with torch.inference_mode():
        lp = token_logprobs(model, tb, chunk_size=chunk_size, temperature=temperature)
    return lp.clone()


__all__ = ["collate", "token_logprobs", "reference_logprobs", "shared_prompt_logprobs"]
