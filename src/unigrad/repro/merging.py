"""Fisher merging beats plain parameter averaging (Matena & Raffel 2022, "Merging Models with
Fisher-Weighted Averaging", NeurIPS).

The paper merges models that share an initialisation by the Fisher-weighted average
θ*_j = Σ_i F_i,j θ_i,j / Σ_i F_i,j (eq. 3, diagonal Fisher F_i of model i) instead of the plain
("isotropic") average θ*_j = (1/M) Σ_i θ_i,j, and finds it better wherever plain averaging is used.

Our test: per seed, one tiny byte-level Llama (``tiny-random``, seed 0) is copied twice and each copy
is fine-tuned with SFT (token-mean NLL, AdamW lr 1e-3, batch 16, 100 steps) on one toy task:

    A (copy):   "copy: qwerty"    -> "qwerty"
    B (shift):  "shift: 3 9 0 4"  -> "4 0 1 5"      (each digit + 1 mod 10)

(400 training and 200 held-out examples per task, drawn from ``random.Random(1000 + seed)``). The two
models are merged with ``unigrad merge --method average`` and ``--method fisher`` (each model's
empirical diagonal Fisher on 64 of its own training examples; also with ``--normalize``), and through
the API with the sampled-label Fisher. The measure is the per-token NLL of the held-out completions of
each task and its mean over the two tasks (lower is better).
"""
from __future__ import annotations

import contextlib
import io
import json
import random
import sys
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from unigrad.repro.base import NOT_REPRODUCED, PARTLY, REPRODUCED, Claim, Outcome, Reproduction, Scale, spread

LETTERS = "abcdefghijklmnopqrstuvwxyz"
AVERAGE, FISHER = "merge: average (CLI)", "merge: fisher (CLI)"
FIGURE = "merging_nll.png"


@dataclass(frozen=True)
class Setting:
    """One scale of the experiment: SFT steps per task, examples per task and for the Fisher."""
    steps: int
    train_size: int
    test_size: int
    fisher_examples: int
    batch: int = 16
    lr: float = 1e-3


FULL = Setting(steps=100, train_size=400, test_size=200, fisher_examples=64)
TINY = Setting(steps=2, train_size=8, test_size=8, fisher_examples=4, batch=4)


# ------------------------------------------------------------------------------------------ data

def task_a(rng: random.Random) -> dict:
    """Copy a random 4-8 letter string."""
    s = "".join(rng.choice(LETTERS) for _ in range(rng.randint(4, 8)))
    return {"prompt": f"copy: {s}", "completion": s}


def task_b(rng: random.Random) -> dict:
    """Add 1 (mod 10) to each of 3-6 random digits."""
    d = [rng.randint(0, 9) for _ in range(rng.randint(3, 6))]
    return {"prompt": "shift: " + " ".join(map(str, d)), "completion": " ".join(str((x + 1) % 10) for x in d)}


def _write(path: Path, records: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def write_tasks(seed: int, setting: Setting, work: Path) -> dict[str, str]:
    """Train and held-out files of both tasks, drawn in the order a-train, a-test, b-train, b-test."""
    rng = random.Random(1000 + seed)
    files = {}
    for name, gen in (("a", task_a), ("b", task_b)):
        files[f"{name}_train"] = _write(work / f"{name}_train.jsonl", [gen(rng) for _ in range(setting.train_size)])
        files[f"{name}_test"] = _write(work / f"{name}_test.jsonl", [gen(rng) for _ in range(setting.test_size)])
    return files


# ------------------------------------------------------------------------------ train and measure

def held_out_nll(model, tokenizer, sequences, batch: int = 50) -> float:
    """Per-token NLL of the completions of ``sequences`` (a mean over all completion tokens)."""
    from unigrad.data.packing import collate
    from unigrad.logprobs import token_logprobs
    total, count = 0.0, 0.0
    with torch.no_grad():
        for i in range(0, len(sequences), batch):
            tb = collate(sequences[i:i + batch], tokenizer.pad_token_id)
            lp = token_logprobs(model, tb)
            total += float(-(lp * tb.completion_mask).sum())
            count += float(tb.completion_mask.sum())
    return total / count


def sft(model, tokenizer, sequences, setting: Setting, seed: int):
    """``setting.steps`` AdamW steps of token-mean NLL on random batches (gradient norm clipped at 1)."""
    from unigrad.data.packing import collate
    from unigrad.logprobs import token_logprobs
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=setting.lr, weight_decay=0.0)
    model.train()
    for _ in range(setting.steps):
        tb = collate(rng.sample(sequences, setting.batch), tokenizer.pad_token_id, packed=True)
        lp = token_logprobs(model, tb)
        loss = -(lp * tb.completion_mask).sum() / tb.completion_mask.sum()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    model.eval()
    return model


def _cli_merge(options: list[str], work: Path, out: str) -> None:
    """``unigrad merge OPTIONS --models work/model_a work/model_b --out work/OUT`` (its report line muted)."""
    from unigrad.cli import main as cli
    with contextlib.redirect_stdout(io.StringIO()):
        rc = cli(["merge", *options, "--models", str(work / "model_a"), str(work / "model_b"), "--out", str(work / out)])
    if rc != 0:
        raise RuntimeError(f"unigrad merge {' '.join(options)} failed with exit code {rc}")


def run_seed(seed: int, setting: Setting, work: Path) -> dict[str, dict[str, float]]:
    """Held-out NLL on both tasks of the base model, each fine-tuned model and each merge."""
    from unigrad.data import load_dataset_sequences
    from unigrad.merge import diagonal_fisher, fisher_merge
    from unigrad.models import load_model, save_model, tiny_random_model, tiny_tokenizer
    torch.manual_seed(seed)
    tok = tiny_tokenizer()
    files = write_tasks(seed, setting, work)
    seqs = {k: load_dataset_sequences(v, "sft", tok, 128) for k, v in files.items()}
    base = tiny_random_model(seed=0, tokenizer=tok)
    models = {}
    for name in ("a", "b"):
        model = tiny_random_model(seed=0, tokenizer=tok)
        model.load_state_dict(base.state_dict())
        models[name] = sft(model, tok, seqs[f"{name}_train"], setting, seed * 10 + ord(name))
        save_model(models[name], tok, work / f"model_{name}")
    fisher_data = ["--data", files["a_train"], files["b_train"], "--format", "sft",
                   "--max-examples", str(setting.fisher_examples)]
    merges = {"average": ["--method", "average"], "fisher": ["--method", "fisher", *fisher_data],
              "fisher_norm": ["--method", "fisher", "--normalize", *fisher_data]}
    for key, options in merges.items():
        _cli_merge(options, work, f"merged_{key}")
    candidates = {"base": base, "model_a (task A only)": models["a"], "model_b (task B only)": models["b"],
                  AVERAGE: load_model(str(work / "merged_average"))[0],
                  FISHER: load_model(str(work / "merged_fisher"))[0],
                  "merge: fisher --normalize (CLI)": load_model(str(work / "merged_fisher_norm"))[0]}
    sampled = [diagonal_fisher(models[n], tok, seqs[f"{n}_train"][:setting.fisher_examples], labels="sampled")
               for n in ("a", "b")]
    candidates["merge: fisher, sampled labels (API)"] = fisher_merge([models["a"], models["b"]], sampled)
    out = {}
    for label, model in candidates.items():
        a, b = held_out_nll(model, tok, seqs["a_test"]), held_out_nll(model, tok, seqs["b_test"])
        out[label] = {"nll_a": a, "nll_b": b, "mean": (a + b) / 2}
    return out


# -------------------------------------------------------------------------------------- verdict

def decide(results: dict[int, dict[str, dict[str, float]]]) -> tuple[str, str, int]:
    """The rule of ``VERDICT_RULE`` applied to per-seed results: (verdict, reason, seeds Fisher won)."""
    seeds = list(results)
    wins = sum(results[s][FISHER]["mean"] < results[s][AVERAGE]["mean"] for s in seeds)
    if wins == len(seeds):
        verdict = REPRODUCED
    elif wins > len(seeds) / 2:
        verdict = PARTLY
    else:
        verdict = NOT_REPRODUCED
    return verdict, f"Fisher merging has the lower mean held-out NLL in {wins} of {len(seeds)} seeds.", wins


def summary_rows(results: dict[int, dict[str, dict[str, float]]]) -> list[dict[str, Any]]:
    """One row per model: mean over seeds of each task's NLL and their mean, its seed spread and the
    per-seed means."""
    seeds = list(results)
    rows = []
    for label in results[seeds[0]]:
        per_seed = [results[s][label] for s in seeds]
        mean, sd = spread([r["mean"] for r in per_seed])
        rows.append({"model": label, "NLL task A": sum(r["nll_a"] for r in per_seed) / len(seeds),
                     "NLL task B": sum(r["nll_b"] for r in per_seed) / len(seeds), "mean NLL": mean,
                     "sd over seeds": sd, "per seed": " ".join(f"{r['mean']:.4f}" for r in per_seed)})
    return rows


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Grouped bars: held-out NLL on task A, task B and their mean (± its seed spread) for every model."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    keys = ("NLL task A", "NLL task B", "mean NLL")
    fig, ax = plt.subplots(figsize=(9.5, 4.6))
    width = 0.8 / len(keys)
    spreads = [row["sd over seeds"] for row in rows] if any(row["sd over seeds"] for row in rows) else None
    for k, key in enumerate(keys):
        xs = [i + (k - 1) * width for i in range(len(rows))]
        errors = spreads if key == "mean NLL" else None
        ax.bar(xs, [row[key] for row in rows], width, label=key, yerr=errors, capsize=3)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([textwrap.fill(row["model"], 16) for row in rows], fontsize=7)
    ax.set_ylabel("held-out per-token NLL (lower is better)")
    ax.set_title("Merging two fine-tuned copies: Fisher-weighted vs plain average")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _seeds(n: int) -> str:
    return f"{n} seed" + ("s" if n != 1 else "")


def run(folder: Path, scale: Scale) -> Outcome:
    setting = scale.pick(FULL, FULL, TINY)
    results = {}
    for seed in scale.seed_list(3):
        with tempfile.TemporaryDirectory() as work:
            results[seed] = run_seed(seed, setting, Path(work))
        if scale.progress:
            print(f"fisher-merging: seed {seed}: average {results[seed][AVERAGE]['mean']:.4f}, "
                  f"fisher {results[seed][FISHER]['mean']:.4f}", file=sys.stderr, flush=True)
    verdict, reason, wins = decide(results)
    rows = summary_rows(results)
    plot(rows, folder / FIGURE)
    by_model = {row["model"]: row for row in rows}
    ours = (f"mean held-out NLL: Fisher {by_model[FISHER]['mean NLL']:.3f} vs average "
            f"{by_model[AVERAGE]['mean NLL']:.3f} (mean of {_seeds(len(results))}); Fisher lower in {wins}/{len(results)}")
    return Outcome(ours=ours, verdict=verdict, reason=reason,
                   numbers={"setting": vars(setting), "results": {str(s): r for s, r in results.items()},
                            "fisher_wins": wins},
                   table=rows, figures=[FIGURE],
                   notes="The merges are not tuned: equal weights, Fisher floor 1e-6, no search over merging "
                         "coefficients (the paper's code picks them on validation data).")


REPRODUCTION = Reproduction(
    name="fisher-merging",
    title="Fisher merging vs plain parameter averaging",
    claim=Claim(
        paper="Matena & Raffel, \"Merging Models with Fisher-Weighted Averaging\", NeurIPS 2022 (arXiv 2111.09832)",
        where="Abstract; §3 (robust fine-tuning, model ensembling), Figure 2",
        statement="Fisher-weighted merging gives a better merged model than plain (isotropic) parameter averaging.",
        paper_number="Figure 2 (five fine-tuned BERT-base models merged, on each of RTE, MRPC and SST-2): Fisher "
                     "merging is above isotropic merging in validation accuracy and comparable to output "
                     "ensembling at a fifth of its cost"),
    setting="Two copies of one tiny byte-level Llama (tiny-random, seed 0), each fine-tuned with SFT for 100 steps "
            "(AdamW lr 1e-3, batch 16) on one toy task (copy letters / add 1 to digits; 400 training examples "
            "each); merged with `unigrad merge --method average` and `--method fisher` (empirical diagonal Fisher on "
            "64 training examples per model, equal weights). 3 seeds (data and batch order); quick: 1 seed; tiny: "
            "2 steps on 8 examples.",
    measure="Per-token NLL of the held-out completions (200 per task), averaged over the two tasks; lower is better.",
    verdict_rule="Reproduced if the Fisher merge (CLI, empirical Fisher) has a lower mean held-out NLL than the plain "
                 "average in every seed; partly reproduced if in more than half of the seeds; not reproduced "
                 "otherwise.",
    run=run,
)
