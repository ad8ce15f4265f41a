"""Fisher merging vs. plain averaging on two toy tasks with the tiny byte-level Llama (CPU, ~1-2 min).

    python benchmarks/merge_toy.py [--steps 100] [--seeds 0 1 2] [--out results.json]

Per seed: one base model (``tiny-random`` weights, seed 0, optionally first trained for
``--pretrain-steps`` on a mix of both tasks' *formats* with random answers — off by default), then
two copies fine-tuned with SFT (token-mean NLL, AdamW lr 1e-3, batch 16) for ``--steps`` steps,
one on task A and one on task B:

  A (copy):     "copy: qwerty"      -> "qwerty"
  B (shift):    "shift: 3 9 0 4"    -> "4 0 1 5"      (each digit + 1 mod 10)

The two fine-tuned models are merged with ``unigrad merge`` (the CLI: ``--method average`` and
``--method fisher`` with each model's empirical diagonal Fisher on 64 of its training examples, and ``--normalize``);
an extra row uses the API for the sampled-label Fisher. Metric: the
per-token NLL of the held-out completions of each task (200 each), and their mean (lower is better).
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from unigrad.cli import main as cli
from unigrad.data import load_dataset_sequences
from unigrad.merge import diagonal_fisher, fisher_merge
from unigrad.models import load_model, save_model, tiny_random_model, tiny_tokenizer
from unigrad.data.packing import collate
from unigrad.logprobs import token_logprobs

LETTERS = "abcdefghijklmnopqrstuvwxyz"


def task_a(rng: random.Random) -> dict:
    s = "".join(rng.choice(LETTERS) for _ in range(rng.randint(4, 8)))
    return {"prompt": f"copy: {s}", "completion": s}


def task_b(rng: random.Random) -> dict:
    d = [rng.randint(0, 9) for _ in range(rng.randint(3, 6))]
    return {"prompt": "shift: " + " ".join(map(str, d)), "completion": " ".join(str((x + 1) % 10) for x in d)}


def write(path: Path, records: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def nll(model, tok, seqs, batch: int = 50) -> float:
    total, count = 0.0, 0.0
    with torch.no_grad():
        for i in range(0, len(seqs), batch):
            tb = collate(seqs[i:i + batch], tok.pad_token_id)
            lp = token_logprobs(model, tb)
            total += float(-(lp * tb.completion_mask).sum())
            count += float(tb.completion_mask.sum())
    return total / count


def sft(model, tok, seqs, steps: int, lr: float, batch: int, seed: int):
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        tb = collate(rng.sample(seqs, batch), tok.pad_token_id, packed=True)
        lp = token_logprobs(model, tb)
        loss = -(lp * tb.completion_mask).sum() / tb.completion_mask.sum()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    model.eval()
    return model


def run_seed(seed: int, args, work: Path) -> dict:
    tok = tiny_tokenizer()
    rng = random.Random(1000 + seed)
    files = {}
    for name, gen in (("a", task_a), ("b", task_b)):
        files[f"{name}_train"] = write(work / f"{name}_train.jsonl", [gen(rng) for _ in range(400)])
        files[f"{name}_test"] = write(work / f"{name}_test.jsonl", [gen(rng) for _ in range(200)])
    seqs = {k: load_dataset_sequences(v, "sft", tok, 128) for k, v in files.items()}

    base = tiny_random_model(seed=0, tokenizer=tok)
    if args.pretrain_steps:
        # formats of both tasks with random answers: a "pretrained" starting point that knows neither task
        mix = [dict(task_a(rng), completion=task_a(rng)["completion"]) for _ in range(200)] + \
              [dict(task_b(rng), completion=task_b(rng)["completion"]) for _ in range(200)]
        mix_seqs = load_dataset_sequences(write(work / "mix.jsonl", mix), "sft", tok, 128)
        sft(base, tok, mix_seqs, args.pretrain_steps, args.lr, 16, seed + 7)
    models = {}
    for name in ("a", "b"):
        m = tiny_random_model(seed=0, tokenizer=tok)
        m.load_state_dict(base.state_dict())
        models[name] = sft(m, tok, seqs[f"{name}_train"], args.steps, args.lr, 16, seed * 10 + ord(name))
        save_model(models[name], tok, work / f"model_{name}")

    fisher_data = ["--data", files["a_train"], files["b_train"], "--format", "sft", "--max-examples", str(args.fisher_examples)]
    runs = {"average": ["--method", "average"], "fisher": ["--method", "fisher", *fisher_data],
            "fisher_norm": ["--method", "fisher", "--normalize", *fisher_data]}
    for key, opts in runs.items():
        rc = cli(["merge", *opts, "--models", str(work / "model_a"), str(work / "model_b"), "--out", str(work / f"merged_{key}")])
        assert rc == 0, f"unigrad merge {' '.join(opts)} failed"
    candidates = {"base": base, "model_a (task A only)": models["a"], "model_b (task B only)": models["b"]}
    candidates["merge: average (CLI)"] = load_model(str(work / "merged_average"))[0]
    candidates["merge: fisher (CLI)"] = load_model(str(work / "merged_fisher"))[0]
    candidates["merge: fisher --normalize (CLI)"] = load_model(str(work / "merged_fisher_norm"))[0]
    sampled = [diagonal_fisher(models[n], tok, seqs[f"{n}_train"][:args.fisher_examples], labels="sampled") for n in ("a", "b")]
    candidates["merge: fisher, sampled labels (API)"] = fisher_merge([models["a"], models["b"]], sampled)
    out = {}
    for label, m in candidates.items():
        a, b = nll(m, tok, seqs["a_test"]), nll(m, tok, seqs["b_test"])
        out[label] = {"nll_a": a, "nll_b": b, "mean": (a + b) / 2}
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--pretrain-steps", type=int, default=0)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--fisher-examples", type=int, default=64)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(2)
    t0 = time.time()
    results = {}
    for seed in args.seeds:
        torch.manual_seed(seed)
        with tempfile.TemporaryDirectory() as d:
            results[seed] = run_seed(seed, args, Path(d))
        print(f"seed {seed} done ({time.time() - t0:.0f} s): " + ", ".join(
            f"{k}={v['mean']:.4f}" for k, v in results[seed].items()), file=sys.stderr)
    labels = list(results[args.seeds[0]])
    print(f"\nheld-out per-token NLL (lower is better), {len(args.seeds)} seeds, {args.steps} SFT steps per task"
          f"{f', {args.pretrain_steps} pretraining steps' if args.pretrain_steps else ''}")
    print(f"{'model':38s} {'task A':>8s} {'task B':>8s} {'mean':>8s}   per-seed mean")
    for label in labels:
        rows = [results[s][label] for s in args.seeds]
        avg = {k: statistics.mean(r[k] for r in rows) for k in ("nll_a", "nll_b", "mean")}
        print(f"{label:38s} {avg['nll_a']:8.4f} {avg['nll_b']:8.4f} {avg['mean']:8.4f}   "
              + " ".join(f"{r['mean']:.4f}" for r in rows))
    wins = sum(results[s]["merge: fisher (CLI)"]["mean"] < results[s]["merge: average (CLI)"]["mean"] for s in args.seeds)
    print(f"\nFisher merge beats plain averaging on {wins}/{len(args.seeds)} seeds; total {time.time() - t0:.0f} s")
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
