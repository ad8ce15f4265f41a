"""Packing: tokenised sequences laid out for one forward pass, padded or packed padding-free, as a ``TokenBatch``.

Packed rows restart their position ids at 0 at each sequence, so the log-prob read-out
(``unigrad.logprobs``) can keep attention inside each sequence.
"""
from __future__ import annotations

from typing import Sequence as _Seq

import torch

from unigrad.tokens import Sequence, TokenBatch


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


def per_token_rows(sequences: _Seq[Sequence], fn, pad_id: int, batch_size: int, packed: bool = False) -> torch.Tensor:
    """[N, T] float32 of ``fn(token batch)`` ([b, t] per completion token) over ``sequences``, ``batch_size``
    at a time without gradients, T the longest completion (0 past each one's end): a per-token quantity
    of the step's rows (values, log-probs) fixed when the experience is made."""
    width = max([len(s.completion_ids) for s in sequences] + [1])
    out = torch.zeros(len(sequences), width)
    with torch.no_grad():
        for start in range(0, len(sequences), batch_size):
            part = sequences[start:start + batch_size]
            values = fn(collate(part, pad_id, packed=packed)).float().cpu()
            out[start:start + len(part), :values.shape[1]] = values[:, :width]
    return out


__all__ = ["per_token_rows", "collate"]

