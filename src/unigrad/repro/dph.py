"""DPH-RL keeps pass@k where GRPO loses it — Li et al. 2025, "The Choice of Divergence: A Neglected Key
to Mitigating Diversity Collapse in Reinforcement Learning with Verifiable Reward" (arXiv 2509.07430).

The claim: RLVR without a divergence (or with the mode-seeking reverse KL) narrows the policy, so
pass@k for large k falls while pass@1 rises; DPH-RL's mass-covering term on samples of the initial
policy (forward KL or JS, ``unigrad.methods.dph``) keeps the solutions the initial policy had.

Our setting: SmolLM2-135M-Instruct is first fine-tuned on the worked solutions of the arithmetic task
(SFT, shared by every arm), so that the initial policy of RL solves part of the problems and some of
them in every sample — the base model alone solves too few problems k/k for a rehearsal set to form.
From that policy every arm trains the same number of RL steps on the same prompts and seeds:

    grpo            DAPO's objective (GRPO's group-normalised advantage, clip 0.2 / 0.28, token mean,
                    no KL): DPH-RL's L_exp alone, on every prompt
    dph-js          DPH-RL with the JS generator on the rehearsal set, η = 0.2
    dph-forward-kl  DPH-RL with forward KL (k3 form) on the rehearsal set, η = 0.05
    grpo-exp        the control, not judged: DPH-RL with η = 0 — DAPO on the D_exp prompts only, so that
                    what the split of the prompts does is told apart from what the divergence term does

(η: the top of the ranges of the authors' README, 0.05–0.2 for JS and 0.01–0.05 for forward KL, since
our runs are short). The rehearsal set — 8 samples per training prompt from the SFT policy, prompts
with 8/8 correct kept — is sampled once and read back by every DPH run (its files carry the weights'
fingerprint), so both DPH arms and both seeds rehearse the same samples.

Measured after training: pass@1 and pass@k (k = 2 … 16) from 16 samples per held-out problem at T = 1
(the unbiased estimator of Chen et al. 2021, ``unigrad.evaluate.pass_at_k``), with the same sampling
seed for every model.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from unigrad.repro.base import NOT_REPRODUCED, PARTLY, REPRODUCED, Claim, Outcome, Reproduction, Scale, spread

ARMS: dict[str, dict] = {
    "grpo": {"name": "dapo", "eps_low": 0.2, "eps_high": 0.28},
    "dph-js": {"name": "dph-rl", "divergence": "js", "eta": 0.2},
    "dph-forward-kl": {"name": "dph-rl", "divergence": "forward-kl", "eta": 0.05},
    "grpo-exp": {"name": "dph-rl", "divergence": "js", "eta": 0.0},
}
BASELINE, DPH_ARMS, CONTROL = "grpo", ("dph-js", "dph-forward-kl"), "grpo-exp"
REHEARSING = (*DPH_ARMS, CONTROL)     # the arms that read the (shared) rehearsal set
SIMILAR_PASS1 = 0.05        # |Δ pass@1| at most this: "at similar pass@1"
EVAL_SEED = 1234            # the same samples' randomness for every evaluated model


@dataclass(frozen=True)
class Setting:
    model: str
    sft_steps: int          # SFT warm start on the demonstrations (shared by every arm)
    steps: int              # RL steps per arm
    batch_size: int         # prompts per RL step (SFT: examples)
    generations: int
    max_new_tokens: int
    train_size: int
    eval_size: int          # held-out problems for pass@k
    samples: int            # samples per held-out problem (n of the estimator)
    ks: tuple
    judge_k: int            # the k the verdict reads
    presample: int          # k of the rehearsal set
    per_step: int           # stored samples per DPH step
    lr: float = 1e-5
    sft_lr: float = 2e-5
    difficulty: int = 2


def _key(s: Setting) -> dict:
    """The setting as it reads back from JSON (tuples become lists): what a saved result is matched by."""
    return json.loads(json.dumps(vars(s)))


def setting(scale: Scale) -> Setting:
    return scale.pick(
        full=Setting("smollm2-135m-instruct", sft_steps=20, steps=12, batch_size=4, generations=8, max_new_tokens=32,
                     train_size=96, eval_size=32, samples=16, ks=(1, 2, 4, 8, 16), judge_k=8, presample=8, per_step=8),
        quick=Setting("smollm2-135m-instruct", sft_steps=20, steps=6, batch_size=4, generations=8, max_new_tokens=32,
                      train_size=48, eval_size=24, samples=16, ks=(1, 2, 4, 8, 16), judge_k=8, presample=8, per_step=8),
        tiny=Setting("tiny-random", sft_steps=2, steps=2, batch_size=2, generations=4, max_new_tokens=8, train_size=8,
                     eval_size=2, samples=4, ks=(1, 2, 4), judge_k=4, presample=3, per_step=2, lr=1e-3, sft_lr=1e-3))


# ------------------------------------------------------------------------------------------ data

def write_data(folder: Path, s: Setting) -> dict[str, Path]:
    """Train prompts (with their worked solutions), the same problems as SFT pairs, held-out problems."""
    from unigrad.tasks.arithmetic import make_splits, write_jsonl
    train, held_out = make_splits(s.train_size, s.eval_size, seed=0, difficulty=s.difficulty)
    data = folder / "data"
    return {"prompts": Path(write_jsonl(train, data / "train_prompts.jsonl")),
            "sft": Path(write_jsonl([{"prompt": r["prompt"], "completion": r["demonstration"]} for r in train],
                                    data / "train_sft.jsonl")),
            "held_out": Path(write_jsonl(held_out, data / "held_out.jsonl"))}


def _train(config: dict, progress: bool) -> None:
    from unigrad.config import load_config
    from unigrad.train import train
    train(load_config(None, [], text=json.dumps(config)), progress=progress)


def warm_start(folder: Path, s: Setting, files: dict[str, Path], progress: bool) -> str:
    """The initial policy of RL: the model after ``sft_steps`` of SFT on the demonstrations (made once)."""
    out = folder / "sft"
    done = out / "repro_setting.json"
    if not (done.is_file() and json.loads(done.read_text()) == _key(s)):
        _train({"model": s.model, "method": {"name": "sft"},
                "data": {"train": str(files["sft"]), "format": "sft", "max_length": 192},
                "train": {"steps": s.sft_steps, "batch_size": 2 * s.batch_size, "lr": s.sft_lr, "warmup_steps": 1,
                          "eval_every": 0, "save_every": 0, "tensorboard": False, "seed": 0},
                "output_dir": str(out)}, progress)
        done.write_text(json.dumps(vars(s)))
    return str(out / "final")


def arm_config(arm: str, s: Setting, files: dict[str, Path], model: str, seed: int, out: Path) -> dict:
    return {"model": model, "method": ARMS[arm],
            "data": {"train": str(files["prompts"]), "format": "prompts", "max_length": 192},
            "rollout": {"num_generations": s.generations, "max_new_tokens": s.max_new_tokens, "temperature": 1.0},
            "reward": {"function": "numeric_match"},
            "rehearsal": {"samples": s.presample, "per_step": s.per_step},
            "train": {"steps": s.steps, "batch_size": s.batch_size, "lr": s.lr, "warmup_steps": 1, "eval_every": 0,
                      "save_every": 0, "tensorboard": False, "seed": seed},
            "output_dir": str(out)}


def measured_arm(arm: str, s: Setting, files: dict[str, Path], model: str, seed: int, folder: Path,
                 progress: bool) -> dict:
    """Train and evaluate one arm for one seed (or read its result back from an earlier run of the same
    setting). A DPH run starts from the shared rehearsal set when one was sampled already."""
    out = folder / f"seed{seed}" / arm
    saved = out / "repro_eval.json"
    if saved.is_file() and (result := json.loads(saved.read_text())).get("setting") == _key(s):
        return {**result, "read_back": True}
    shared = folder / "rehearsal"
    if arm in REHEARSING and shared.is_dir():
        shutil.copytree(shared, out / "rehearsal", dirs_exist_ok=True)
    _train(arm_config(arm, s, files, model, seed, out), progress)
    if arm in REHEARSING and not shared.is_dir():
        shutil.copytree(out / "rehearsal", shared)
    result = {"seed": seed, "setting": vars(s), **evaluate(str(out / "final"), s, files)}
    if arm in REHEARSING:
        result["rehearsal"] = {**_rehearsal_summary(out / "rehearsal"), **_drift(out)}
    saved.write_text(json.dumps(result, indent=1))
    (out / "eval.json").write_text(json.dumps(result, indent=1))      # shown by the run's report
    return result


def _drift(out: Path) -> dict:
    """How far the policy moved on the stored samples: the last step's mean log π_θ/π_ref over them and the
    rehearsal term's value (before η)."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    last = [row for row in rows if "pef_rows" in row][-1:]
    if not last:
        return {}
    keys = {key.split("/")[-1]: value for key, value in last[0].items()
            if key.startswith("pef/") and key.count("/") == 2 and key.endswith(("log_ratio_mean", "objective"))}
    return {"last_log_ratio_on_stored": keys.get("log_ratio_mean"), "last_divergence_term": keys.get("objective")}


def _rehearsal_summary(folder: Path) -> dict:
    meta = json.loads((folder / "rehearsal.json").read_text())
    return {"pef_prompts": len(meta["pef"]), "exp_prompts": len(meta["exp"]), **meta["metrics"]}


# ------------------------------------------------------------------------------------ evaluation

def evaluate(model_path: str, s: Setting, files: dict[str, Path]) -> dict:
    """pass@k for ``s.ks`` from ``s.samples`` samples per held-out problem at T = 1 (unbiased estimator)."""
    from unigrad.data.sources import read_records
    from unigrad.evaluate import evaluate_prompts
    from unigrad.models import load_model
    from unigrad.rewards import numeric_match
    model, tokenizer = load_model(model_path)
    held_out = [r.value for r in read_records(str(files["held_out"]))]
    sampled = evaluate_prompts(model, tokenizer, held_out, numeric_match, k=list(s.ks), num_samples=s.samples,
                               temperature=1.0, seed=EVAL_SEED, max_new_tokens=s.max_new_tokens, batch_size=64)
    solved = [r["num_correct"] for r in sampled["records"]]
    return {**{f"pass@{k}": sampled[f"pass@{k}"] for k in s.ks}, "greedy_accuracy": sampled["accuracy"],
            "num_correct": solved, "distinct_correct_answers": _distinct_correct(sampled["records"])}


def _distinct_correct(records: list[dict]) -> float:
    """Mean number of distinct correct completions per problem (a diversity reading beside pass@k)."""
    counts = [len({x["completion"] for x in r["samples"] if x["reward"] > 0.5}) for r in records]
    return sum(counts) / max(len(counts), 1)


# ------------------------------------------------------------------------------------------ verdict

VERDICT_RULE = (
    "Measures per arm and seed: pass@1 and pass@8 on the held-out problems (16 samples each at T = 1, unbiased "
    "estimator; the same sampling seed for every model). A DPH arm (dph-js or dph-forward-kl) is at similar pass@1 "
    f"when its mean pass@1 is within {SIMILAR_PASS1} of GRPO's. The arm judged is the DPH arm at similar pass@1 with "
    "the larger mean pass@8 gap over GRPO (paired by seed). Reproduced: that gap is positive in every seed and its "
    "mean exceeds its seed-to-seed standard deviation. Partly reproduced: some DPH arm has a higher mean pass@8 than "
    "GRPO, but not at similar pass@1, or not in every seed, or within the spread (one seed cannot show the spread). "
    "Not reproduced: neither DPH arm's mean pass@8 is above GRPO's. The control grpo-exp (η = 0) is reported beside "
    "them, not judged.")


def judge(per_arm: dict[str, list[dict]], k: int = 8) -> tuple[str, str, dict]:
    """The verdict by ``VERDICT_RULE`` (pass@k with k = ``k``) and the numbers it was read from."""
    key = f"pass@{k}"
    facts = {}
    for arm in DPH_ARMS:
        gaps = [d[key] - g[key] for d, g in zip(per_arm[arm], per_arm[BASELINE])]
        gap, sd = spread(gaps)
        facts[arm] = {"gaps": gaps, "gap": gap, "gap_sd": sd,
                      "pass@1_gap": spread([d["pass@1"] - g["pass@1"] for d, g in zip(per_arm[arm], per_arm[BASELINE])])[0]}
        if CONTROL in per_arm:    # the divergence term's own share of the gap
            facts[arm]["gap_over_control"] = spread([d[key] - c[key] for d, c in zip(per_arm[arm], per_arm[CONTROL])])[0]
    similar = [arm for arm in DPH_ARMS if abs(facts[arm]["pass@1_gap"]) <= SIMILAR_PASS1]
    facts["similar_pass@1"] = similar
    above = [arm for arm in DPH_ARMS if facts[arm]["gap"] > 0]
    if not above:
        return NOT_REPRODUCED, ("neither DPH arm has a higher mean " + key + " than GRPO (gaps "
                                + ", ".join(f"{a} {facts[a]['gap']:+.3f}" for a in DPH_ARMS) + ")."), facts
    judged = max(similar or above, key=lambda arm: facts[arm]["gap"])
    f = facts[judged]
    facts["judged"] = judged
    lead = f"{judged}'s {key} is {f['gap']:+.3f} over GRPO (pass@1 {f['pass@1_gap']:+.3f})"
    failed = []
    if judged not in similar:
        failed.append(f"its pass@1 differs from GRPO's by more than {SIMILAR_PASS1}")
    if f["gap"] <= 0:
        failed.append(f"among the arms at similar pass@1 its {key} is not above GRPO's")
    if not all(g > 0 for g in f["gaps"]):
        failed.append("not in every seed (gaps " + ", ".join(f"{g:+.3f}" for g in f["gaps"]) + ")")
    if len(f["gaps"]) < 2:
        failed.append("one seed cannot separate the gap from the seed-to-seed spread")
    elif f["gap"] <= f["gap_sd"]:
        failed.append(f"the mean gap is within the seed-to-seed spread (paired sd {f['gap_sd']:.3f})")
    if failed:
        return PARTLY, lead + "; but " + "; ".join(failed) + ".", facts
    return REPRODUCED, lead + f", in every seed (paired sd {f['gap_sd']:.3f}).", facts


# ------------------------------------------------------------------------------------------ the run

def plot(per_arm: dict[str, list[dict]], base: dict, ks: tuple, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    for arm, runs in per_arm.items():
        left.plot(ks, [spread([r[f"pass@{k}"] for r in runs])[0] for k in ks], marker="o", label=arm,
                  linewidth=2.2 if arm in DPH_ARMS else 1.4)
    left.plot(ks, [base[f"pass@{k}"] for k in ks], color="#d62728", linestyle="--", label="initial policy (SFT)")
    left.set_xscale("log", base=2)
    left.set_xticks(ks, [str(k) for k in ks])
    left.set_xlabel("k")
    left.set_title("pass@k on held-out problems (mean over seeds)", fontsize=11)
    left.legend(fontsize=8)
    left.grid(True, alpha=0.3)
    for arm, runs in per_arm.items():
        right.scatter([r["pass@1"] for r in runs], [r[f"pass@{ks[-2] if len(ks) > 1 else ks[-1]}"] for r in runs],
                      label=arm, s=36)
    right.scatter([base["pass@1"]], [base[f"pass@{ks[-2] if len(ks) > 1 else ks[-1]}"]], color="#d62728", marker="x",
                  label="initial policy")
    right.set_xlabel("pass@1")
    right.set_ylabel(f"pass@{ks[-2] if len(ks) > 1 else ks[-1]}")
    right.set_title("each seed: pass@1 against pass@k", fontsize=11)
    right.legend(fontsize=8)
    right.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _base(folder: Path, s: Setting, files: dict[str, Path], model: str) -> dict:
    saved = folder / "base_eval.json"
    if saved.is_file() and (result := json.loads(saved.read_text())).get("setting") == _key(s):
        return result
    result = {"setting": vars(s), **evaluate(model, s, files)}
    saved.write_text(json.dumps(result, indent=1))
    return result


def run(folder: Path, scale: Scale) -> Outcome:
    s = setting(scale)
    seeds = scale.seed_list(2)
    files = write_data(folder, s)
    model = warm_start(folder, s, files, scale.progress)
    base = _base(folder, s, files, model)
    per_arm = {arm: [measured_arm(arm, s, files, model, seed, folder, scale.progress) for seed in seeds] for arm in ARMS}
    verdict, reason, facts = judge(per_arm, s.judge_k)
    plot(per_arm, base, s.ks, folder / "dph_pass_at_k.png")
    keys = [f"pass@{k}" for k in s.ks]
    table = [{"arm": "initial policy (SFT)", **{key: f"{base[key]:.3f}" for key in keys},
              "distinct correct / problem": f"{base['distinct_correct_answers']:.2f}"}]
    for arm, runs in per_arm.items():
        row = {"arm": arm}
        for key in keys + ["distinct_correct_answers"]:
            m, sd = spread([r[key] for r in runs])
            row["distinct correct / problem" if key == "distinct_correct_answers" else key] = (
                f"{m:.3f} ± {sd:.3f}" if len(runs) > 1 else f"{m:.3f}")
        table.append(row)
    rehearsal = next((r["rehearsal"] for arm in REHEARSING for r in per_arm[arm] if "rehearsal" in r), {})
    drift = {arm: [r.get("rehearsal", {}).get("last_log_ratio_on_stored") for r in per_arm[arm]] for arm in DPH_ARMS}
    judge_key = f"pass@{s.judge_k}"
    mean = lambda arm, key: spread([r[key] for r in per_arm[arm]])[0]   # noqa: E731
    ours = ("pass@1 / " + judge_key + f" (initial policy {base['pass@1']:.3f} / {base[judge_key]:.3f}): "
            + ", ".join(f"{arm} {mean(arm, 'pass@1'):.3f} / {mean(arm, judge_key):.3f}" for arm in ARMS)
            + f"; {len(seeds)} seed(s)")
    numbers = {"setting": vars(s), "seeds": seeds, "base": {k: v for k, v in base.items() if k != "setting"},
               "per_arm": {arm: [{k: v for k, v in r.items() if k not in ("setting", "read_back")} for r in runs]
                           for arm, runs in per_arm.items()},
               "rehearsal": rehearsal, "drift_on_stored": drift, "verdict_facts": facts}
    read_back = sum(bool(r.get("read_back")) for runs in per_arm.values() for r in runs)
    notes = (f"Rehearsal set: {rehearsal.get('pef_prompts', 0)} of {s.train_size} training prompts solved "
             f"{s.presample}/{s.presample} by the initial policy (its sample accuracy "
             f"{rehearsal.get('presample_accuracy', float('nan')):.3f}); the other prompts are explored. The GRPO arm "
             "trains on every prompt; on a prompt solved in every rollout its advantage is 0, so the arms differ in the "
             "rehearsal term and the batches' prompts; grpo-exp (η = 0) has DPH's prompts without the term, so DPH "
             "against grpo-exp is the divergence term's own effect. The last step's mean log π_θ/π_ref on the stored "
             f"samples per DPH run: {drift} (the forward-KL weight on a stored token is −(u − 1): at log u ≈ 0 the "
             "term barely acts). "
             f"{read_back} arm runs were read back from an earlier invocation.")
    return Outcome(ours=ours, verdict=verdict, reason=reason, numbers=numbers, table=table,
                   figures=["dph_pass_at_k.png"], notes=notes)


REPRODUCTION = Reproduction(
    name="dph-rl",
    title="DPH-RL keeps pass@k where GRPO loses it",
    claim=Claim(
        paper=("Li et al. 2025, \"The Choice of Divergence: A Neglected Key to Mitigating Diversity Collapse in "
               "Reinforcement Learning with Verifiable Reward\" (arXiv 2509.07430, ICLR 2026)"),
        where="abstract, and the in-domain Pass@k comparison with GRPO (math and SQL)",
        statement=("RLVR with no divergence (or the reverse KL) lowers Pass@k while raising Pass@1; DPH-RL, a "
                   "mass-covering f-divergence (forward KL or JS) on samples of the initial policy, improves both "
                   "Pass@1 and Pass@k over GRPO."),
        paper_number=("qualitative here: DPH-RL (forward KL, JS) above GRPO on Pass@k at equal or higher Pass@1 on "
                      "Llama-3.1-8B (Bird SQL) and Qwen2.5 (math); the tables' numbers are not transcribed")),
    setting=("SmolLM2-135M-Instruct after 20 SFT steps (8 examples, lr 2e-5) on the worked solutions of the arithmetic "
             "task (level 2: a op b, "
             "shared by every arm), then per arm 12 RL steps of 4 prompts × 8 rollouts (32 new tokens, T = 1) over 96 "
             "training problems, AdamW lr 1e-5, 1 warm-up step and cosine schedule; arms grpo (DAPO's objective, no KL), "
             "dph-js (η = 0.2) and dph-forward-kl (η = 0.05) with a rehearsal set of 8 samples per prompt and 8 stored "
             "samples per step, and the control grpo-exp (η = 0: DAPO on DPH's exploration prompts only); 2 seeds. "
             "Quick: 6 RL steps, 48 training and 24 held-out problems, 1 seed."),
    measure=("pass@1, 2, 4, 8, 16 from 16 samples at T = 1 per held-out problem (32), unbiased estimator; mean "
             "distinct correct completions per problem; mean ± sd over seeds; the initial policy beside them."),
    verdict_rule=VERDICT_RULE,
    run=run,
)
