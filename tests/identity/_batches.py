"""Random float64 batches for the gradient-identity tests (no unigrad import needed here)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def random_pair_batch(seed: int, n_pairs: int | None = None, max_len: int = 9) -> dict:
    """A batch of ``n_pairs`` preference pairs (3..5 when None) as plain float64 tensors.

    - 2·P rows, T = max_len columns, variable lengths (trailing zero mask, ≥ 1 token per row);
    - logp, logp_ref < 0 (−2·softplus(randn)), and exactly 0 where mask is 0;
    - group ids not contiguous (random distinct ids from 0..999), sign +1 chosen / −1 rejected;
    - rows shuffled so that pair members are in no particular order or position.
    Returns a dict with keys logp, mask, logp_ref, group, sign (logp does not require grad).
    """
    gen = torch.Generator().manual_seed(seed)
    P = n_pairs if n_pairs is not None else int(torch.randint(3, 6, (1,), generator=gen))
    B, T = 2 * P, max_len
    lengths = torch.randint(1, T + 1, (B,), generator=gen)
    mask = (torch.arange(T)[None, :] < lengths[:, None]).to(torch.float64)
    logp = -2.0 * F.softplus(torch.randn(B, T, generator=gen, dtype=torch.float64)) * mask
    logp_ref = -2.0 * F.softplus(torch.randn(B, T, generator=gen, dtype=torch.float64)) * mask
    ids = torch.randperm(1000, generator=gen)[:P]
    group = torch.cat([ids, ids]).long()
    sign = torch.cat([torch.ones(P), -torch.ones(P)]).to(torch.float64)
    perm = torch.randperm(B, generator=gen)
    return dict(logp=logp[perm], mask=mask[perm], logp_ref=logp_ref[perm], group=group[perm], sign=sign[perm])


def random_sft_batch(seed: int, rows: int = 6, max_len: int = 9) -> dict:
    """Rows of variable length (≥ 1 token) with negative logp; no pairs, no reference."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, max_len + 1, (rows,), generator=gen)
    mask = (torch.arange(max_len)[None, :] < lengths[:, None]).to(torch.float64)
    logp = -2.0 * F.softplus(torch.randn(rows, max_len, generator=gen, dtype=torch.float64)) * mask
    return dict(logp=logp, mask=mask)
