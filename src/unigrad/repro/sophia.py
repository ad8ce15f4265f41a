"""Sophia-G against AdamW: steps to a target held-out loss on a small language-model training run
(Liu et al. 2024, "Sophia: A Scalable Stochastic Second-order Optimizer for Language Model
Pre-training", ICLR, arXiv 2305.14342).

A language model trained from random initialisation — the pre-training setting of the paper, at toy
size: unigrad's tiny Llama (2 layers, hidden 64, byte-level vocabulary) learns the worked solutions of
the arithmetic task (``tasks.arithmetic``) by SFT (token-mean NLL on the solutions), both optimisers
through the same loop with the same data order, batch, warm-up + cosine schedule and gradient clipping.
Each optimiser's learning rate is tuned on the same grid (the same effort for both, seed 0, lowest
final held-out loss); the chosen learning rates then run on every seed. The target is the held-out
loss tuned AdamW reaches at its last step (mean over seeds); each optimiser's steps to target is the
first evaluation at which its held-out loss (mean over seeds) is at or below it.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from unigrad.repro.base import NOT_REPRODUCED, PARTLY, REPRODUCED, Claim, Outcome, Reproduction, Scale, spread

PAPER = ("Liu, Li, Hall, Liang & Ma 2024, \"Sophia: A Scalable Stochastic Second-order Optimizer for Language Model "
         "Pre-training\" (ICLR, arXiv 2305.14342)")
OPTIMIZERS = {   # the paper's GPT-2 small settings (its §3.1 and code): AdamW β (0.9, 0.95), wd 0.1; Sophia-G
    "adamw": {"optimizer": "adamw", "betas": [0.9, 0.95], "weight_decay": 0.1},
    "sophia-g": {"optimizer": "sophia-g", "weight_decay": 0.2,
                 "optimizer_args": {"betas": [0.965, 0.99], "rho": 0.05, "every": 10}},
}
LABELS = {"adamw": "AdamW", "sophia-g": "Sophia-G"}


@dataclass(frozen=True)
class Setting:
    model: str
    steps: int
    batch_size: int
    eval_every: int
    train_examples: int
    eval_examples: int
    warmup: int
    grid: tuple          # learning rates tried first for each optimiser
    extensions: int      # at most this many values added beyond an edge of the grid that is best


def setting(scale: Scale) -> Setting:
    return scale.pick(Setting("tiny-random", 400, 16, 20, 4000, 200, 20, (3e-4, 1e-3, 3e-3, 1e-2), 2),
                      Setting("tiny-random", 200, 16, 20, 2000, 100, 10, (1e-3, 3e-3), 1),
                      Setting("tiny-random", 6, 4, 3, 40, 8, 1, (3e-3,), 0))


def half_decade(lr: float, up: bool) -> float:
    """The next value of the 1, 3, 10, 30, … sequence above (or below) ``lr``."""
    exponent = math.floor(math.log10(lr) + 1e-9)
    one = lr / 10 ** exponent < 2
    if up:
        return float(f"{(3 if one else 10) * 10 ** exponent:.1g}")
    return float(f"{(3 * 10 ** (exponent - 1)) if one else 10 ** exponent:.1g}")


def tune(train_at, grid: tuple, extensions: int) -> dict:
    """{lr: curve} over ``grid``, extended by one value of the 1–3–10 sequence beyond whichever edge has
    the lowest final loss, at most ``extensions`` times, so the chosen learning rate is inside what was tried."""
    curves = {lr: train_at(lr) for lr in grid}
    for _ in range(extensions):
        ordered = sorted(curves)
        best = min(ordered, key=lambda lr: curves[lr][-1][1])
        if len(ordered) > 1 and best not in (ordered[0], ordered[-1]):
            break
        lr = half_decade(best, up=best == ordered[-1])
        curves[lr] = train_at(lr)
    return dict(sorted(curves.items()))


def write_data(folder: Path, s: Setting) -> tuple[Path, Path]:
    """The arithmetic task's worked solutions as SFT pairs (prompt → demonstration)."""
    from unigrad.tasks.arithmetic import make_splits, write_jsonl
    train, held_out = make_splits(s.train_examples, s.eval_examples, seed=0)
    paths = folder / "data" / "train.jsonl", folder / "data" / "eval.jsonl"
    for records, path in zip((train, held_out), paths):
        write_jsonl([{"prompt": r["prompt"], "completion": r["demonstration"]} for r in records], path)
    return paths


def config(s: Setting, data: tuple[Path, Path], name: str, lr: float, seed: int, out: Path) -> dict:
    return {"model": {"name": s.model, "dtype": "float32"}, "method": {"name": "sft"},
            "data": {"train": str(data[0]), "eval": str(data[1]), "format": "sft", "max_length": 256},
            "train": {"steps": s.steps, "batch_size": s.batch_size, "lr": lr, "schedule": "cosine",
                      "warmup_steps": s.warmup, "min_lr_ratio": 0.1, "max_grad_norm": 1.0, "eval_every": s.eval_every,
                      "save_every": 0, "tensorboard": False, "seed": seed, "threads": 1, **OPTIMIZERS[name]},
            "output_dir": str(out)}


def curve(out: Path) -> list[tuple[int, float]]:
    """(step, held-out loss) from a run's metrics, the evaluation before training at step 0."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [(row["step"], row["eval/objective"]) for row in rows if "eval/objective" in row]


def first_at_or_below(points: list[tuple[int, float]], target: float) -> int | None:
    return next((step for step, loss in points if loss <= target + 1e-12), None)


def mean_curve(curves: list[list[tuple[int, float]]]) -> list[tuple[int, float]]:
    return [(points[0][0], sum(p[1] for p in points) / len(points)) for points in zip(*curves)]


def _train(s, data, name, lr, seed, out, progress) -> list[tuple[int, float]]:
    from unigrad.config import load_config
    from unigrad.train import train
    if not (out / "final").is_dir():
        train(load_config(None, [], text=json.dumps(config(s, data, name, lr, seed, out))), progress=progress)
    return curve(out)


def _plot(folder: Path, tuning: dict, final: dict, target: float) -> None:
    """Left: every tuning run (the chosen one darker); right: the chosen learning rates, seed-mean."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for name, colour in (("adamw", "#1f77b4"), ("sophia-g", "#d62728")):
        for lr, points in tuning[name].items():
            axes[0].plot(*zip(*points), color=colour, alpha=0.35 + 0.15 * (lr == final[name]["lr"]),
                         label=f"{LABELS[name]} lr {lr:g}")
        points = final[name]["mean"]
        axes[1].plot(*zip(*points), "o-", color=colour, ms=3, label=f"{LABELS[name]} lr {final[name]['lr']:g}")
    axes[1].axhline(target, color="grey", ls="--", lw=1, label="target: tuned AdamW's final loss")
    axes[0].set_title("tuning (seed 0)")
    axes[1].set_title("tuned, mean over seeds")
    for ax in axes:
        ax.set_xlabel("optimiser step")
        ax.set_ylabel("held-out loss (token-mean NLL)")
        ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(folder / "sophia_vs_adamw.png", dpi=110)
    plt.close(fig)


RULE = ("Target = tuned AdamW's held-out loss at its last step (mean over seeds); speed-up = AdamW's steps to the "
        "target / Sophia-G's (first evaluation at or below it, on the seed-mean curves). Reproduced if the speed-up "
        "is at least 1.8 (the paper's 2×, less an evaluation interval's rounding); partly if it is at least 1.2; "
        "not reproduced if it is below 1.2 or Sophia-G never reaches the target.")


def run(folder: Path, scale: Scale) -> Outcome:
    s = setting(scale)
    seeds = scale.seed_list(3)
    data = write_data(folder, s)
    tuning = {name: tune(lambda lr, name=name: _train(s, data, name, lr, 0, folder / "runs" / f"{name}-lr{lr:g}-seed0",
                                                      scale.progress), s.grid, s.extensions) for name in OPTIMIZERS}
    final = {}
    for name in OPTIMIZERS:
        lr = min(tuning[name], key=lambda x: tuning[name][x][-1][1])
        curves = [tuning[name][lr] if seed == 0 else
                  _train(s, data, name, lr, seed, folder / "runs" / f"{name}-lr{lr:g}-seed{seed}", scale.progress)
                  for seed in seeds]
        final[name] = {"lr": lr, "curves": curves, "mean": mean_curve(curves),
                       "final": spread([c[-1][1] for c in curves])}
    target = final["adamw"]["mean"][-1][1]
    steps = {name: first_at_or_below(final[name]["mean"], target) for name in OPTIMIZERS}
    speedup = steps["adamw"] / steps["sophia-g"] if steps["sophia-g"] else 0.0
    verdict = REPRODUCED if speedup >= 1.8 else PARTLY if speedup >= 1.2 else NOT_REPRODUCED
    _plot(folder, tuning, final, target)
    table = [{"optimiser": LABELS[name], "tuned lr": final[name]["lr"],
              "grid (final loss, seed 0)": ", ".join(f"{lr:g}: {c[-1][1]:.4f}" for lr, c in tuning[name].items()),
              "final held-out loss": f"{final[name]['final'][0]:.4f} ± {final[name]['final'][1]:.4f}",
              "steps to target": steps[name] if steps[name] is not None else "never"} for name in OPTIMIZERS]
    reached = f"at step {steps['sophia-g']}" if steps["sophia-g"] else "never"
    return Outcome(
        ours=(f"Sophia-G reaches tuned AdamW's final held-out loss {target:.4f} {reached} against AdamW's "
              f"{steps['adamw']} (speed-up {speedup:.2f}×, {len(seeds)} seed(s))"),
        verdict=verdict, reason=f"speed-up {speedup:.2f}× by the rule.",
        numbers={"setting": asdict(s), "seeds": seeds, "target": target, "steps_to_target": steps,
                 "speedup": speedup, "tuning": {n: {str(lr): c for lr, c in t.items()} for n, t in tuning.items()},
                 "final": final},
        table=table, figures=["sophia_vs_adamw.png"],
        notes=("Tuning effort: the same learning-rate grid for both, one run per value (seed 0), extended by one "
               "half-decade beyond an edge that is best (at most twice); the other settings are the paper's GPT-2 "
               "small ones, untuned. A toy model trained from scratch on synthetic text; the paper's claim is for "
               "GPT-2 (125M–770M) pre-training on OpenWebText."))


REPRODUCTION = Reproduction(
    name="sophia-vs-adamw",
    title="Sophia-G reaches AdamW's loss in fewer steps",
    claim=Claim(PAPER, "Figure 1, Figure 4 and §3.2",
                "Sophia achieves the same validation pre-training loss with 50% fewer steps than AdamW.",
                "2× fewer steps (GPT-2 small to large on OpenWebText; GPT NeoX 1.5B/6.6B on the Pile)."),
    setting=("unigrad's tiny Llama (2 layers, hidden 64, byte-level vocabulary) from random initialisation, SFT on 4000 "
             "worked arithmetic solutions, batch 16, 400 steps (quick: 200), 20 warm-up steps then cosine to 0.1× lr, "
             "gradient clip 1.0; AdamW β (0.9, 0.95), wd 0.1; Sophia-G β (0.965, 0.99), ρ 0.05, wd 0.2, curvature "
             "every 10 steps; lr grid 3e-4, 1e-3, 3e-3, 1e-2 for each (quick: 1e-3, 3e-3), extended by a "
             "half-decade beyond a best edge (at most twice; quick: once); 3 seeds (quick: 1)."),
    measure="Held-out token-mean NLL on 200 other problems every 20 steps; steps to tuned AdamW's final loss.",
    verdict_rule=RULE,
    run=run,
)
