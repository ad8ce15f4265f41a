"""Diagnostics: CHES scores of preference data (likelihood displacement) and filtering by them; the
covariance of log π and Â behind policy-entropy change (``logp_advantage_covariance``).

CHES (Razin, Malladi, Bhaskar, Chen, Arora, Hanin 2024, "Unintentional Unalignment: Likelihood
Displacement in Direct Preference Optimization", ICLR 2025; Definition 2; official code
princeton-nlp/unintentional-unalignment ``ches/ches.py``). Confidence H (FORMULAS.md §10). With
h_{x,y<k} the last layer's hidden state (``last_hidden_state``, after the final norm, i.e. the
input of the unembedding) at the position that predicts token y_k:

    H+ = Σ_{k=1..|y+|} h_{x, y+_{<k}},      H− = Σ_{k=1..|y−|} h_{x, y−_{<k}}
    CHES(x, y+, y−)    = ⟨H+, H−⟩ − ‖H+‖²
    LN-CHES(x, y+, y−) = ⟨H+, H−⟩ / (|y+| |y−|) − ‖H+‖² / |y+|²

The positions run from the last prompt token to the second-to-last response token: the responses
here end with EOS (as the data layer tokenises them), so |y| counts EOS and the EOS position itself
is dropped, exactly as the official code does. A higher score means DPO on the pair is more likely
to lower the chosen response's likelihood (likelihood displacement); the paper filters the pairs
with the highest LN-CHES before training (``filter_pairs``).
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Sequence as _Seq

import torch
from torch import Tensor

from unigrad.tokens import Sequence


@torch.no_grad()
def hidden_sums(model, sequences: _Seq[Sequence], pad_id: int, batch_size: int = 8) -> tuple[Tensor, Tensor]:
    """``(H, n)``: H [S, D] float32, the sum of the last-layer hidden states that predict each
    completion token of each sequence; n [S] its number of completion tokens."""
    from unigrad.data.packing import collate
    from unigrad.logprobs import body_and_head

    body, _, _ = body_and_head(model)
    device = next(model.parameters()).device
    sums, counts = [], []
    for i in range(0, len(sequences), batch_size):
        tb = collate(sequences[i:i + batch_size], pad_id).to(device)   # right-padded: causal attention is exact
        out = body(input_ids=tb.input_ids, position_ids=tb.position_ids, use_cache=False)
        hidden = (out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]).float()  # [B, L, D]
        b = torch.arange(tb.input_ids.shape[0], device=device)[:, None].expand_as(tb.completion_col)
        h = hidden[b, (tb.completion_col - 1).clamp_min(0)]                 # [B, T, D] states predicting y_t
        sums.append((h * tb.completion_mask[..., None]).sum(1).cpu())
        counts.append(tb.completion_mask.sum(1).cpu())
    return torch.cat(sums), torch.cat(counts)


def ches_scores(model, tokenizer, sequences: _Seq[Sequence], batch_size: int = 8) -> dict[str, Tensor]:
    """CHES and LN-CHES of every pair in ``sequences`` (as the data layer makes them from ``pairs``
    records: per group one chosen row, sign +1, and one rejected row, sign −1).

    Returns ``{"group": [P] long, "ches": [P], "ln_ches": [P]}`` (float64), pairs in order of first appearance.
    """
    chosen: dict[int, int] = {}
    rejected: dict[int, int] = {}
    for i, s in enumerate(sequences):
        side = chosen if s.sign > 0 else rejected
        if s.group in side:
            raise ValueError(f"group {s.group} has two {'chosen' if s.sign > 0 else 'rejected'} responses; "
                             "CHES needs exactly one chosen and one rejected response per pair")
        side[s.group] = i
    groups = list(dict.fromkeys(s.group for s in sequences))
    missing = [g for g in groups if g not in chosen or g not in rejected]
    if missing:
        raise ValueError(f"group {missing[0]} lacks a chosen or a rejected response (CHES needs pairs)")
    if not groups:
        raise ValueError("ches_scores needs at least one pair")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    H, n = hidden_sums(model, list(sequences), pad, batch_size)
    H, n = H.double(), n.double()
    ip, ir = torch.tensor([chosen[g] for g in groups]), torch.tensor([rejected[g] for g in groups])
    hp, hr, np_, nr = H[ip], H[ir], n[ip], n[ir]
    cross, own = (hp * hr).sum(-1), (hp * hp).sum(-1)
    return {
        "group": torch.tensor(groups, dtype=torch.long),
        "ches": cross - own,
        "ln_ches": cross / (np_ * nr) - own / np_ ** 2,
    }


def filter_pairs(scores: Tensor, keep_fraction: float) -> list[int]:
    """Indices (ascending) of the pairs to keep: all but the ``1 − keep_fraction`` share with the highest
    score; keeps ``round(keep_fraction · P)`` pairs (ties: the earlier pair is kept)."""
    if not 0.0 <= keep_fraction <= 1.0:
        raise ValueError(f"keep_fraction must be in [0, 1], got {keep_fraction}")
    s = [float(x) for x in scores]
    keep = int(round(keep_fraction * len(s)))
    order = sorted(range(len(s)), key=lambda i: (s[i], i))   # lowest first
    return sorted(order[:keep])


# ------------------------------------------------------------------------------------------ CLI

def add_diagnose_command(commands) -> None:
    """``unigrad diagnose ches``: registered on the CLI's sub-command parsers."""
    diagnose = commands.add_parser("diagnose", help="diagnostics of data for a model (ches)")
    kinds = diagnose.add_subparsers(dest="diagnostic", required=True)
    p = kinds.add_parser("ches", help="CHES / LN-CHES score of every preference pair; optionally drop the highest")
    p.add_argument("--model", default="smollm2-135m-instruct", help="model name or folder")
    p.add_argument("--data", required=True, help="a pairs dataset (prompt, chosen, rejected)")
    p.add_argument("--out", help="write one JSON line per pair (index, source, line/row, ches, ln_ches)")
    p.add_argument("--filter-out", help="write the pairs' records without the highest-scoring ones to this JSONL file")
    p.add_argument("--keep-fraction", type=float, default=0.9, help="share of the pairs to keep (default 0.9)")
    p.add_argument("--by", choices=("ln_ches", "ches"), default="ln_ches", help="score to filter by (default ln_ches, as the paper)")
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(handler=run_ches_command)


def run_ches_command(args) -> int:
    from unigrad.config import ConfigError
    from unigrad.data import read_records, tokenize
    from unigrad.models import load_model

    if not 0.0 <= args.keep_fraction <= 1.0:
        raise ConfigError(f"--keep-fraction must be in [0, 1], got {args.keep_fraction}")
    model, tokenizer = load_model(args.model)
    records = read_records(args.data)
    sequences = tokenize(records, tokenizer, "pairs", args.max_length, truncation=True)
    scores = ches_scores(model, tokenizer, sequences, batch_size=args.batch_size)
    rows = []
    for k, g in enumerate(scores["group"].tolist()):
        rows.append({"index": g, **records[g].meta, "ches": float(scores["ches"][k]), "ln_ches": float(scores["ln_ches"][k])})
    if args.out:
        _write_jsonl(args.out, rows)
    vals = [r[args.by] for r in rows]
    finite = [v for v in vals if math.isfinite(v)]
    print(f"{args.by} over {len(rows)} pairs: mean {sum(finite) / max(len(finite), 1):.4g}, "
          f"min {min(finite):.4g}, max {max(finite):.4g}" + (f"; scores written to {args.out}" if args.out else ""))
    if args.filter_out:
        kept = filter_pairs(scores[args.by], args.keep_fraction)
        _write_jsonl(args.filter_out, [records[rows[k]["index"]].value for k in kept])
        print(f"kept {len(kept)} of {len(rows)} pairs (dropped the highest {args.by}) in {args.filter_out}")
    return 0


def _write_jsonl(path: str, rows: list[Any]) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False, default=str) + "\n")


COV_TOP_RATIO = 2e-4   # Cui et al.'s clip ratio r (Clip-Cov) and their KL-Cov k for the larger models


@torch.no_grad()
def logp_advantage_covariance(logp: Tensor, advantage: Tensor, mask: Tensor,
                              top_ratio: float = COV_TOP_RATIO) -> dict[str, float]:
    """The covariance of the log-probability and the advantage over a batch's tokens, the quantity
    that drives the change of policy entropy under policy gradient (Cui et al. 2025, "The Entropy
    Mechanism of Reinforcement Learning for Reasoning Language Models", arXiv 2505.22617, §3 and §4):

        Cov_i = (log π_θ(y_i) − (1/N) Σ_j log π_θ(y_j)) · (Â_i − (1/N) Σ_j Â_j)    over the N tokens

    (their Clip-Cov / KL-Cov per-token centred product). Returns

        entropy/cov_logp_adv       (1/N) Σ_i Cov_i, the batch covariance (> 0: entropy tends to fall)
        entropy/cov_top_mean       the mean Cov_i over the top ⌈k·N⌉ tokens (the set KL-Cov penalises)
        entropy/cov_top_fraction   their share of the positive covariance, Σ_top Cov / Σ_{Cov>0} Cov

    ``advantage`` is [B] (one per sequence, spread over its tokens) or [B, T]; ``mask`` [B, T] marks
    the tokens counted; k = ``top_ratio``. Nothing ({}) where Â is the same on every token (SFT):
    the covariance is 0 by construction there."""
    keep = mask > 0
    adv = (advantage[:, None].expand_as(logp) if advantage.dim() == 1 else advantage)[keep].detach().double()
    if adv.numel() == 0 or bool((adv == adv[0]).all()):
        return {}
    lp = logp.detach()[keep].double()
    cov = (lp - lp.mean()) * (adv - adv.mean())
    top = torch.topk(cov, max(1, math.ceil(top_ratio * cov.numel()))).values
    positive = cov.clamp(min=0).sum()
    share = float(top.clamp(min=0).sum() / positive) if float(positive) > 0 else 0.0
    return {"entropy/cov_logp_adv": float(cov.mean()), "entropy/cov_top_mean": float(top.mean()),
            "entropy/cov_top_fraction": share}


__all__ = ["COV_TOP_RATIO", "ches_scores", "hidden_sums", "filter_pairs", "add_diagnose_command",
           "logp_advantage_covariance", "run_ches_command"]
