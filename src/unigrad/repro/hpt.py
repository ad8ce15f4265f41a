"""HPT beats SFT alone and RL alone — Lv et al. 2025, "Towards a Unified View of Large Language Model
Post-Training" (arXiv 2509.04419), Table 1 and its ablations.

HPT routes each prompt by its rollouts' success rate P(q): at P(q) ≤ γ it learns from the prompt's
demonstration (SFT), otherwise from its rollouts (GRPO); ``unigrad.methods.rl.hpt``. The arms below
differ only in their method (and, for SFT → GRPO, in splitting the steps between two runs); every
arm has the same model, prompts, learning rate, schedule, batch of prompts and optimiser steps, and
every arm that samples draws 8 rollouts of each of its 4 prompts per step:

    sft             SFT on the demonstrations of the step's prompts, every step (no rollouts)
    grpo            GRPO on the rollouts, every step
    sft-then-grpo   SFT for the first half of the steps, then GRPO from that model for the second half
                    (on fresh prompts: the second run draws with another seed)
    hpt             HPT with γ = 0 (SFT only when no rollout is right: the paper's Qwen2.5-Math setting)
    hpt-gamma-0.25  HPT with γ = 2/8 (the paper's setting for its non-math base model, Llama-3.1-8B):
                    an ablation beside the comparison, not judged, run for the first seed only

LUFFY (Yan et al. 2025) does not fall out of the parts yet: it puts the demonstration *inside* the
rollout group — the group's mean and std are taken over the rollouts and the demonstration, whose
reward is 1 — and gives the demonstration's tokens the shaped weight f(π_θ) = π_θ / (π_θ + γ) with
π_den ≡ 1. Our rollout producer gives a demonstration row its own group entry with reward 0 that only
the HPT gate reads, and no advantage part pools on- and off-policy rows; it is left out rather than
approximated.

Measured after training: greedy accuracy on held-out problems, pass@1/4/8 (8 samples at T = 1,
unbiased estimator) on part of them, and, for transfer, greedy accuracy on a second held-out split
in another prompt wording ("Calculate 12 + 7 and write the result between <answer> and </answer>."
instead of "What is 12 + 7? Give the final answer as <answer>number</answer>.").
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from unigrad.repro.base import NOT_REPRODUCED, PARTLY, REPRODUCED, Claim, Outcome, Reproduction, Scale, spread

KS = (1, 4, 8)
HPT_ARM = "hpt"        # the arm the verdict is about (the paper's main setting)
ABLATIONS = ("hpt-gamma-0.25",)   # shown beside the comparison for the first seed (2 CPU cores' budget)


@dataclass(frozen=True)
class Phase:
    method: dict
    data: str              # "sft": the demonstrations as prompt/completion; "prompts": rollouts
    share: float           # fraction of the arm's optimiser steps


ARMS: dict[str, tuple[Phase, ...]] = {
    "sft": (Phase({"name": "sft"}, "sft", 1.0),),
    "grpo": (Phase({"name": "grpo"}, "prompts", 1.0),),
    "sft-then-grpo": (Phase({"name": "sft"}, "sft", 0.5), Phase({"name": "grpo"}, "prompts", 0.5)),
    "hpt": (Phase({"name": "hpt", "gamma": 0.0}, "prompts", 1.0),),
    "hpt-gamma-0.25": (Phase({"name": "hpt", "gamma": 0.25}, "prompts", 1.0),),
}


@dataclass(frozen=True)
class Setting:
    model: str
    steps: int
    batch_size: int
    generations: int
    max_new_tokens: int
    train_size: int
    eval_size: int          # greedy held-out problems (and as many transfer problems)
    pass_size: int          # held-out problems sampled 8 times for pass@k
    difficulty: int = 2
    lr: float = 1e-5


def setting(scale: Scale) -> Setting:
    return scale.pick(
        full=Setting("smollm2-135m-instruct", steps=20, batch_size=4, generations=8, max_new_tokens=32,
                     train_size=2000, eval_size=100, pass_size=50),
        quick=Setting("smollm2-135m-instruct", steps=4, batch_size=4, generations=8, max_new_tokens=32,
                      train_size=2000, eval_size=40, pass_size=16),
        tiny=Setting("tiny-random", steps=2, batch_size=2, generations=4, max_new_tokens=8,
                     train_size=16, eval_size=4, pass_size=2, lr=1e-3))


# ------------------------------------------------------------------------------------------ data

def write_data(folder: Path, s: Setting) -> dict[str, Path]:
    """The task's splits as files every arm reads: train prompts (with demonstrations), the same
    problems as SFT pairs, the held-out problems and the reworded transfer problems."""
    from unigrad.tasks.arithmetic import make_splits, reworded, write_jsonl
    train, held_out = make_splits(s.train_size, 2 * s.eval_size, seed=0, difficulty=s.difficulty)
    transfer = [reworded(r, "imperative") for r in held_out[s.eval_size:]]
    data = folder / "data"
    return {
        "prompts": Path(write_jsonl(train, data / "train_prompts.jsonl")),
        "sft": Path(write_jsonl([{"prompt": r["prompt"], "completion": r["demonstration"]} for r in train],
                                data / "train_sft.jsonl")),
        "held_out": Path(write_jsonl(held_out[:s.eval_size], data / "held_out.jsonl")),
        "transfer": Path(write_jsonl(transfer, data / "transfer.jsonl")),
    }


def run_config(phase: Phase, s: Setting, files: dict[str, Path], model: str, steps: int, seed: int, out: Path) -> dict:
    config = {
        "model": model,
        "method": phase.method,
        "data": {"train": str(files[phase.data]), "format": phase.data, "max_length": 192},
        "train": {"steps": steps, "batch_size": s.batch_size, "lr": s.lr, "warmup_steps": 1, "eval_every": 0,
                  "save_every": 0, "track_kl": True, "tensorboard": False, "seed": seed},
        "reference": {"precompute": False},   # KL to the initial model per batch, not over the 2000 examples first
        "output_dir": str(out),
    }
    if phase.data == "prompts":
        config["rollout"] = {"num_generations": s.generations, "max_new_tokens": s.max_new_tokens, "temperature": 1.0}
        config["reward"] = {"function": "numeric_match"}
    return config


def phase_dir(folder: Path, arm: str, index: int) -> Path:
    phases = ARMS[arm]
    return folder / (arm if len(phases) == 1 else f"{arm}/{index}-{phases[index].method['name']}")


def train_arm(arm: str, s: Setting, files: dict[str, Path], seed: int, folder: Path, progress: bool) -> tuple[Path, dict]:
    """Train one arm for one seed; returns its last run's folder (holding ``final/``) and its budget."""
    from unigrad.config import load_config
    from unigrad.train import train
    model, done, rollouts = s.model, 0, 0
    phases = ARMS[arm]
    for index, phase in enumerate(phases):
        steps = s.steps - done if index == len(phases) - 1 else max(1, round(s.steps * phase.share))
        out = phase_dir(folder, arm, index)
        config = run_config(phase, s, files, model, steps, seed + 1000 * index, out)
        train(load_config(None, [], text=json.dumps(config)), progress=progress)
        model, done = str(out / "final"), done + steps
        rollouts += steps * s.batch_size * s.generations if phase.data == "prompts" else 0
    return out, {"optimiser_steps": done, "rollouts": rollouts}


def measured_arm(arm: str, s: Setting, files: dict[str, Path], seed: int, folder: Path, progress: bool) -> dict:
    """Train and evaluate one arm for one seed, or read its result back when an earlier run of the
    same setting finished it (an interrupted ``unigrad repro hpt`` continues where it stopped)."""
    last = phase_dir(folder, arm, len(ARMS[arm]) - 1)
    saved = last / "repro_eval.json"
    if saved.is_file():
        result = json.loads(saved.read_text())
        if result.get("setting") == vars(s):
            return {**result, "read_back": True}
    out, budget = train_arm(arm, s, files, seed, folder, progress)
    result = {"seed": seed, "setting": vars(s), "budget": budget, **evaluate(str(out / "final"), s, files, seed)}
    saved.write_text(json.dumps(result, indent=1))
    (out / "eval.json").write_text(json.dumps(result, indent=1))    # shown by the run's report
    return result


# ------------------------------------------------------------------------------------ evaluation

def evaluate(model_path: str, s: Setting, files: dict[str, Path], seed: int) -> dict:
    """Greedy held-out accuracy, pass@k on the first ``pass_size`` held-out problems, greedy transfer accuracy."""
    from unigrad.data.sources import read_records
    from unigrad.evaluate import evaluate_prompts
    from unigrad.models import load_model
    from unigrad.rewards import numeric_match
    model, tokenizer = load_model(model_path)
    held_out = [r.value for r in read_records(str(files["held_out"]))]
    transfer = [r.value for r in read_records(str(files["transfer"]))]
    common = {"max_new_tokens": s.max_new_tokens, "batch_size": 64}
    greedy = evaluate_prompts(model, tokenizer, held_out, numeric_match, k=None, num_samples=0, **common)
    sampled = evaluate_prompts(model, tokenizer, held_out[:s.pass_size], numeric_match, k=list(KS),
                               num_samples=max(KS), temperature=1.0, seed=seed, **common)
    moved = evaluate_prompts(model, tokenizer, transfer, numeric_match, k=None, num_samples=0, **common)
    return {"accuracy": greedy["accuracy"], **{f"pass@{k}": sampled[f"pass@{k}"] for k in KS},
            "transfer_accuracy": moved["accuracy"], "examples": greedy["records"][:3]}


# ------------------------------------------------------------------------------------------ verdict

VERDICT_RULE = (
    "Primary measure: greedy held-out accuracy after training, per seed. The HPT arm judged is γ = 0 (the "
    "paper's main setting); γ = 2/8 is reported beside it. 'Best other' is the arm without HPT (sft, grpo, "
    "sft-then-grpo) with the highest mean. Reproduced: HPT's mean is above the best other arm's, HPT beats it "
    "in every seed, the mean paired gap (same seed: same prompts and sampling seeds) exceeds the paired gap's "
    "seed-to-seed standard deviation, and HPT's mean transfer accuracy and pass@8 are not below the best other "
    "arm's. Partly reproduced: HPT's mean is above the best other arm's but another condition fails (one seed "
    "cannot show the spread). Not reproduced: the best other arm's mean is equal to or above HPT's.")


def judge(per_arm: dict[str, list[dict]]) -> tuple[str, str, dict]:
    """The verdict by ``VERDICT_RULE`` and the numbers it was read from."""
    def mean(arm: str, key: str = "accuracy") -> float:
        return spread([r[key] for r in per_arm[arm]])[0]
    best_other = max((arm for arm in per_arm if not arm.startswith("hpt")), key=mean)
    gaps = [h["accuracy"] - o["accuracy"] for h, o in zip(per_arm[HPT_ARM], per_arm[best_other])]
    gap, gap_sd = spread(gaps)
    facts = {"best_other": best_other, "gap": gap, "gap_sd": gap_sd, "gaps": gaps,
             "transfer_gap": mean(HPT_ARM, "transfer_accuracy") - mean(best_other, "transfer_accuracy"),
             "pass@8_gap": mean(HPT_ARM, "pass@8") - mean(best_other, "pass@8")}
    if gap <= 0:
        return NOT_REPRODUCED, (f"{best_other} reaches {mean(best_other):.3f} mean held-out accuracy, HPT (γ = 0) "
                                f"{mean(HPT_ARM):.3f}."), facts
    failed = []
    if not all(g > 0 for g in gaps):
        failed.append(f"HPT does not beat {best_other} in every seed (gaps {', '.join(f'{g:+.3f}' for g in gaps)})")
    if len(gaps) < 2:
        failed.append("one seed cannot separate the gap from the seed-to-seed spread")
    elif gap <= gap_sd:
        failed.append(f"the mean gap is within the seed-to-seed spread (paired sd {gap_sd:.3f})")
    if facts["transfer_gap"] < 0:
        failed.append(f"its transfer accuracy is {-facts['transfer_gap']:.3f} below {best_other}'s")
    if facts["pass@8_gap"] < 0:
        failed.append(f"its pass@8 is {-facts['pass@8_gap']:.3f} below {best_other}'s")
    lead = f"HPT (γ = 0) is best on held-out accuracy, {gap:+.3f} over {best_other}"
    if failed:
        return PARTLY, lead + "; but " + "; ".join(failed) + ".", facts
    return REPRODUCED, lead + f" (paired sd {gap_sd:.3f}), and not behind it on transfer or pass@8.", facts


# ------------------------------------------------------------------------------------------ the run

def plot(per_arm: dict[str, list[dict]], base: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    arms = list(per_arm)
    panels = [("accuracy", "held-out accuracy (greedy)"), ("transfer_accuracy", "transfer: other wording (greedy)"),
              ("pass@8", "pass@8 (T = 1)")]
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(17, 4.2))
    for ax, (key, title) in zip(axes, panels):
        values = [[r[key] for r in per_arm[arm]] for arm in arms]
        means = [spread(v)[0] for v in values]
        sds = [spread(v)[1] for v in values]
        ax.bar(range(len(arms)), means, yerr=sds, color=["#1f77b4" if a.startswith("hpt") else "#999999" for a in arms],
               capsize=4, alpha=0.8)
        for i, v in enumerate(values):
            ax.scatter([i] * len(v), v, color="black", s=12, zorder=3)
        ax.axhline(base[key], color="#d62728", linestyle="--", linewidth=1.2, label="base model")
        ax.set_xticks(range(len(arms)), arms, rotation=30, ha="right", fontsize=9)
        ax.set_title(title, fontsize=11)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    ax = axes[-1]
    for arm in arms:
        ax.plot(KS, [spread([r[f"pass@{k}"] for r in per_arm[arm]])[0] for k in KS], marker="o", label=arm,
                linewidth=2.2 if arm.startswith("hpt") else 1.2)
    ax.plot(KS, [base[f"pass@{k}"] for k in KS], color="#d62728", linestyle="--", label="base model")
    ax.set_xscale("log", base=2)
    ax.set_xticks(KS, [str(k) for k in KS])
    ax.set_title("pass@k (mean over seeds)", fontsize=11)
    ax.set_xlabel("k")
    ax.legend(fontsize=7)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(folder: Path, scale: Scale) -> Outcome:
    s = setting(scale)
    seeds = scale.seed_list(3)
    files = write_data(folder, s)
    base = _base_model(folder, s, files)
    per_arm: dict[str, list[dict]] = {arm: [] for arm in ARMS}
    for seed in seeds:
        for arm in ARMS:
            if arm not in ABLATIONS or seed == seeds[0]:
                per_arm[arm].append(measured_arm(arm, s, files, seed, folder / f"seed{seed}", scale.progress))
    budgets = {arm: runs[0]["budget"] for arm, runs in per_arm.items()}
    verdict, reason, facts = judge(per_arm)
    plot(per_arm, base, folder / "hpt_comparison.png")
    table = [{"arm": "base model", "held-out accuracy": base["accuracy"], "transfer accuracy": base["transfer_accuracy"],
              **{f"pass@{k}": base[f"pass@{k}"] for k in KS}, "optimiser steps": 0, "rollouts": 0}]
    for arm, runs in per_arm.items():
        row = {"arm": arm}
        for key, label in (("accuracy", "held-out accuracy"), ("transfer_accuracy", "transfer accuracy"),
                           *((f"pass@{k}", f"pass@{k}") for k in KS)):
            m, sd = spread([r[key] for r in runs])
            row[label] = f"{m:.3f} ± {sd:.3f}" if len(runs) > 1 else f"{m:.3f}" + (" (1 seed)" if len(seeds) > 1 else "")
        table.append({**row, "optimiser steps": budgets[arm]["optimiser_steps"], "rollouts": budgets[arm]["rollouts"]})
    comparison = _overlay(folder, seeds[0])
    mean = lambda arm: spread([r["accuracy"] for r in per_arm[arm]])[0]
    ours = (f"held-out greedy accuracy (base {base['accuracy']:.2f}): "
            + ", ".join(f"{arm} {mean(arm):.3f}" + (" (1 seed)" if len(per_arm[arm]) < len(seeds) else "")
                        for arm in ARMS) + f"; {len(seeds)} seed(s)")
    numbers = {"setting": vars(s), "seeds": seeds, "base": {k: v for k, v in base.items() if k not in ("examples", "setting")},
               "per_arm": {arm: [{k: v for k, v in r.items() if k not in ("examples", "setting", "read_back")} for r in runs]
                           for arm, runs in per_arm.items()},
               "budgets": budgets, "verdict_facts": facts, "comparison_page": comparison}
    read_back = sum(bool(r.get("read_back")) for runs in per_arm.values() for r in runs)
    numbers["arm_runs_read_back"] = read_back
    notes = (f"{read_back} of {sum(map(len, per_arm.values()))} arm runs were read back from earlier invocations of this "
             "setting (an interrupted run continues where it stopped); the wall time counts this invocation only. "
             "Equal budgets: every arm takes the same number of optimiser steps on batches of the same prompts; "
             "SFT uses no rollouts and SFT → GRPO half of them. LUFFY is not run (see the module docstring). "
             f"Training curves of seed {seeds[0]}, overlaid: {comparison or 'not written'}.")
    return Outcome(ours=ours, verdict=verdict, reason=reason, numbers=numbers, table=table,
                   figures=["hpt_comparison.png"], notes=notes,
                   links={f"training curves of seed {seeds[0]}, all arms overlaid": comparison} if comparison else {})


def _base_model(folder: Path, s: Setting, files: dict[str, Path]) -> dict:
    saved = folder / "base_eval.json"
    if saved.is_file() and (result := json.loads(saved.read_text())).get("setting") == vars(s):
        return result
    result = {"setting": vars(s), **evaluate(s.model, s, files, seed=0)}
    saved.write_text(json.dumps(result, indent=1))
    return result


def _overlay(folder: Path, seed: int) -> str | None:
    """The arms' training curves of one seed on one page (``unigrad report RUN ...``)."""
    try:
        from unigrad.report import write_comparison
    except ImportError:
        return None
    runs = [phase_dir(folder / f"seed{seed}", arm, len(phases) - 1) for arm, phases in ARMS.items()]
    page = write_comparison(runs, folder / "curves", labels=list(ARMS))
    return str(Path(page).relative_to(folder))


REPRODUCTION = Reproduction(
    name="hpt",
    title="HPT beats SFT alone and RL alone",
    claim=Claim(
        paper="Lv et al. 2025, \"Towards a Unified View of Large Language Model Post-Training\" (arXiv 2509.04419)",
        where="Table 1 (main results) and the ablations of the gate",
        statement="HPT, switching per prompt between SFT on the demonstration and GRPO on the rollouts by the "
                  "rollouts' success rate, surpasses SFT, GRPO, SFT → GRPO and LUFFY across models and benchmarks.",
        paper_number=("Qwen2.5-Math-7B, mean accuracy over six math benchmarks (Table 2 of v2): HPT 52.7, LUFFY 49.8, "
                      "SFT → GRPO 46.5, SFT 44.5, GRPO 43.1 (base 19.3); out of domain (ARC-c, GPQA-Diamond) HPT 62.3, "
                      "LUFFY 60.1, GRPO 58.8, SFT → GRPO 49.3, SFT 46.4. Gate ablation (Table 6, Qwen2.5-Math-1.5B): "
                      "γ = 0 41.9, 1/8 38.7, 2/8 39.0.")),
    setting=("SmolLM2-135M-Instruct on the built-in arithmetic task (level 2: a op b), 2000 training problems with "
             "worked demonstrations; per arm 20 optimiser steps of 4 prompts (8 rollouts each, 32 new tokens, T = 1), "
             "AdamW lr 1e-5, cosine schedule with 1 warm-up step; arms sft, grpo, sft-then-grpo (10 + 10), hpt "
             "(γ = 0) on 3 seeds (the seed sets the prompts' order and the sampling), and hpt-gamma-0.25 (γ = 2/8) "
             "beside them on the first seed. Quick: 4 steps, 1 seed, 40 held-out problems."),
    measure=("Greedy accuracy on 100 held-out problems; pass@1/4/8 from 8 samples at T = 1 on the first 50 of them "
             "(unbiased estimator); greedy accuracy on 100 other held-out problems in another prompt wording "
             "(transfer). Mean ± sd over seeds; the base model beside them."),
    verdict_rule=VERDICT_RULE,
    run=run,
)
