"""Does CHES predict which pairs lose chosen likelihood under DPO? (SmolLM2-135M-Instruct, CPU)

    python benchmarks/ches_displacement.py [--pairs 60] [--steps 15] [--per-pair 20] [--out results.json]

1. Scores the first ``--pairs`` pairs of the shipped ``data/pairs/train.jsonl`` with CHES and LN-CHES
   (``unigrad.diagnostics.ches_scores``) under the initial model.
2. Joint run: DPO (β = 0.1) on those pairs with ``unigrad.train.train`` (AdamW, lr ``--lr``,
   constant schedule, batch 4, ``--steps`` steps: 15 steps = one epoch of 60 pairs), then the
   per-pair drop of the chosen log-likelihood, drop = ℓ_before(y+) − ℓ_after(y+) (sum over tokens).
3. Per-pair run (the quantity CHES is derived for, Razin et al. Thm. 2): for each of the first
   ``--per-pair`` pairs, from the initial model, ``--pair-steps`` plain gradient-descent steps of DPO on
   that pair alone (lr ``--pair-lr``), then the drop of its chosen log-likelihood.

Reports Pearson and Spearman correlations between each score and each drop, and the mean drop of the
pairs in the top 10% / rest by LN-CHES.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from unigrad.config import load_config
from unigrad.data import read_records, tokenize
from unigrad.diagnostics import ches_scores
from unigrad.models import load_model
from unigrad.data.packing import collate
from unigrad.logprobs import token_logprobs

PAIRS = Path(__file__).resolve().parents[1] / "src" / "unigrad" / "resources" / "data" / "pairs" / "train.jsonl"


def seq_logps(model, tok, seqs, batch: int = 16) -> torch.Tensor:
    out = []
    with torch.no_grad():
        for i in range(0, len(seqs), batch):
            out.append(token_logprobs(model, collate(seqs[i:i + batch], tok.pad_token_id)).sum(-1).double())
    return torch.cat(out)


def rank(x: torch.Tensor) -> torch.Tensor:
    order = torch.argsort(x, stable=True)
    r = torch.empty_like(x, dtype=torch.float64)
    r[order] = torch.arange(len(x), dtype=torch.float64)
    for v in torch.unique(x):          # average ranks of ties
        m = x == v
        if int(m.sum()) > 1:
            r[m] = r[m].mean()
    return r


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def spearman(a, b) -> float:
    return pearson(rank(a), rank(b))


def correlations(scores: dict, drop: torch.Tensor) -> dict:
    return {f"{k}/{c}": fn(scores[k][: len(drop)], drop) for k in ("ches", "ln_ches")
            for c, fn in (("pearson", pearson), ("spearman", spearman))}


def top_vs_rest(ln: torch.Tensor, drop: torch.Tensor, share: float = 0.1) -> tuple[float, float]:
    k = max(1, int(round(share * len(drop))))
    top = torch.argsort(ln[: len(drop)], descending=True)[:k]
    mask = torch.zeros(len(drop), dtype=torch.bool)
    mask[top] = True
    return float(drop[mask].mean()), float(drop[~mask].mean())


def per_pair_drops(model, tok, seqs, n: int, steps: int, lr: float, beta: float) -> torch.Tensor:
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    params = [p for p in model.parameters() if p.requires_grad]
    drops = []
    for g in range(n):
        pair = [seqs[2 * g], seqs[2 * g + 1]]
        tb = collate(pair, tok.pad_token_id)
        model.train()
        ref = None
        for _ in range(steps):
            lp = token_logprobs(model, tb).sum(-1)
            ref = lp.detach() if ref is None else ref       # the initial model is the reference
            h = lp - ref
            loss = -F.logsigmoid(beta * (h[0] - h[1]))
            grads = torch.autograd.grad(loss, params)
            with torch.no_grad():
                for p, gr in zip(params, grads):
                    p.sub_(lr * gr)
        model.eval()
        with torch.no_grad():
            after = token_logprobs(model, tb).sum(-1)
        drops.append(float(ref[0] - after[0]))
        model.load_state_dict(init)
    return torch.tensor(drops, dtype=torch.float64)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=60)
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--per-pair", type=int, default=20, help="pairs for the per-pair protocol (0: skip it)")
    ap.add_argument("--pair-steps", type=int, default=1)
    ap.add_argument("--pair-lr", type=float, default=1e-3)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    model, tok = load_model("smollm2-135m-instruct")
    with tempfile.TemporaryDirectory() as work:
        data = Path(work) / "pairs.jsonl"
        data.write_text("".join(PAIRS.read_text().splitlines(keepends=True)[: args.pairs]))
        seqs = tokenize(read_records(data), tok, "pairs", 256)
        scores = ches_scores(model, tok, seqs)
        chosen = seqs[0::2]
        before = seq_logps(model, tok, chosen)
        print(f"CHES scored {args.pairs} pairs ({time.time() - t0:.0f} s)", file=sys.stderr)

        result = {"args": vars(args), "ches": scores["ches"].tolist(), "ln_ches": scores["ln_ches"].tolist()}
        if args.per_pair:
            drops = per_pair_drops(model, tok, seqs, min(args.per_pair, args.pairs), args.pair_steps, args.pair_lr, args.beta)
            result["per_pair"] = {"drop": drops.tolist(), **correlations(scores, drops),
                                  "frac_dropped": float((drops > 0).double().mean()),
                                  "top10_vs_rest": top_vs_rest(scores["ln_ches"], drops)}
            print(f"per-pair protocol done ({time.time() - t0:.0f} s)", file=sys.stderr)

        if args.steps:
            config = load_config(None, [f"data.train={data}", f"output_dir={Path(work) / 'run'}", f"train.steps={args.steps}",
                                        f"train.lr={args.lr:.6e}", f"method.beta={args.beta:.6e}", f"train.threads={args.threads}"],
                                 text="model: smollm2-135m-instruct\nmethod: {name: dpo}\n"
                                      "data: {format: pairs, max_length: 256}\nreference: {precompute: true}\n"
                                      "train: {batch_size: 4, schedule: constant, max_grad_norm: 1.0, tensorboard: false}\n")
            from unigrad.train import train
            summary = train(config, progress=False)
            trained, _ = load_model(summary["final_model"])
            after = seq_logps(trained, tok, chosen)
            rejected_before, rejected_after = seq_logps(model, tok, seqs[1::2]), seq_logps(trained, tok, seqs[1::2])
            drops = before - after
            result["joint"] = {"drop": drops.tolist(), **correlations(scores, drops),
                               "frac_dropped": float((drops > 0).double().mean()),
                               "mean_chosen_change": float(-drops.mean()),
                               "mean_rejected_change": float((rejected_after - rejected_before).mean()),
                               "top10_vs_rest": top_vs_rest(scores["ln_ches"], drops)}
            print(f"joint DPO run done ({time.time() - t0:.0f} s)", file=sys.stderr)

    print(f"\nCHES vs. drop of the chosen log-likelihood, SmolLM2-135M-Instruct, first {args.pairs} shipped pairs")
    ln = scores["ln_ches"]
    print(f"LN-CHES: mean {float(ln.mean()):.3f}, min {float(ln.min()):.3f}, max {float(ln.max()):.3f}; "
          f"CHES: mean {float(scores['ches'].mean()):.1f}")
    for name, label in (("per_pair", f"per pair ({args.per_pair} pairs, {args.pair_steps} GD steps, lr {args.pair_lr}, each from the initial model)"),
                        ("joint", f"joint DPO ({args.steps} AdamW steps, batch 4, lr {args.lr})")):
        if name not in result:
            continue
        r = result[name]
        print(f"\n{label}: chosen log-lik fell on {r['frac_dropped']:.0%} of pairs; mean drop {sum(r['drop']) / len(r['drop']):.3f}"
              + (f"; mean rejected change {r['mean_rejected_change']:.3f}" if name == "joint" else ""))
        for key in ("ches", "ln_ches"):
            print(f"  {key:8s} Pearson {r[f'{key}/pearson']:+.3f}  Spearman {r[f'{key}/spearman']:+.3f}")
        top, rest = r["top10_vs_rest"]
        print(f"  mean drop, top 10% LN-CHES pairs {top:.3f} vs the rest {rest:.3f}")
    print(f"\ntotal {time.time() - t0:.0f} s")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
