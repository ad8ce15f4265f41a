"""GA vs NPO at equal forgetting (Zhang et al. 2024, "Negative Preference Optimization: From
Catastrophic Collapse to Effective Unlearning").

The claim: NPO, L = (2/β) E_forget[log(1 + (π_θ/π_ref)^β)], unlearns while keeping the model's
utility, where gradient ascent (GA, L = E_forget[log π_θ]) collapses it. Its gradient is GA's
weighted by 2σ(β·h), h = log π_θ − log π_ref: a forget sequence already pushed far below the
reference stops being pushed.

The experiment: a model memorises made-up facts ("Where does Zorbek live?" → "Quelmar."), split
into forget and retain rows, by full fine-tuning (``sft``) on all of them; from that checkpoint GA
and NPO run through ``unigrad.train.train`` with the same lr, steps, full batch of the forget rows
(neither objective has a retain term), clipping and AdamW. The policy is scored after every update
(the loop is unchanged; its ``load_model`` and ``apply_update`` are wrapped for the run, so nothing
is written per step): forget and retain NLL, per-token mean over completion tokens, and the median
and minimum per-sequence forget NLL.

Equal forgetting is measured three ways — by the mean forget NLL, by the median and by the minimum
per-sequence forget NLL — at 5 common levels between the start and the lower of the two runs'
highest value (each trajectory linearly interpolated at its first crossing). The retain-only
yardstick (TOFU's notion of forgotten): the same fine-tuning on the retain rows only gives a model
that never saw the forget facts; its forget NLL is the level an unlearned model should reach, and
each method's retain NLL where its forget NLL reaches it is reported.
"""
from __future__ import annotations

import json
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from unigrad.repro.base import NOT_REPRODUCED, PARTLY, REPRODUCED, Claim, Outcome, Reproduction, Scale

AXES = (("forget", "mean"), ("forget_median", "median"), ("forget_min", "min"))
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.95)
SHARE = 0.8          # of the compared levels, by every measure, for "reproduced"
COLLAPSE_GAP = 1.0   # GA collapses, NPO does not: GA's final retain NLL ≥ NPO's + 1 nat and ≥ 2 × NPO's
COLLAPSE_RATIO = 2.0
SYLLABLES = ["zor", "bek", "quel", "mar", "tis", "van", "dru", "pel", "kos", "rin", "fal", "nox", "ber", "lim",
             "gat", "sur", "hol", "mev", "dax", "yun"]


@dataclass(frozen=True)
class Setting:
    """One scale's experiment. ``model``: a model name, or None for a tiny random byte-level Llama
    of ``hidden`` × ``layers``; ``betas``: NPO's β → unlearning steps (GA runs the longest of them
    once: with a constant lr its first steps are the same whatever the step count)."""
    model: str | None
    hidden: int
    layers: int
    n_forget: int
    n_retain: int
    sft_steps: int
    sft_lr: float
    lr: float
    betas: dict[float, int]
    data_seeds: int


FULL = Setting("smollm2-135m-instruct", 0, 0, 10, 30, 40, 2e-4, 1e-5, {0.1: 30, 1.0: 90}, 3)
QUICK = Setting(None, 128, 2, 20, 40, 400, 1e-3, 1e-4, {0.1: 60, 1.0: 60}, 1)
TINY = Setting(None, 32, 1, 6, 6, 30, 3e-3, 1e-3, {0.1: 4, 1.0: 6}, 1)


# ------------------------------------------------------------------------------------------- data

def _word(rng: random.Random) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(2)).capitalize()


def make_facts(path: Path, n_forget: int, n_retain: int, seed: int) -> None:
    """``forget``-format rows "Where does NAME live?" → "CITY.", the first ``n_forget`` names forget
    rows, shuffled; the same seed gives the same file."""
    rng = random.Random(seed)
    names: list[str] = []
    while len(names) < n_forget + n_retain:
        w = _word(rng)
        if w not in names:
            names.append(w)
    rows = [{"prompt": f"Where does {name} live?", "completion": f"{_word(rng)}.",
             "split": "forget" if i < n_forget else "retain"} for i, name in enumerate(names)]
    rng.shuffle(rows)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _subset(data: Path, split: str, path: Path) -> Path:
    path.write_text("".join(line + "\n" for line in data.read_text().splitlines() if json.loads(line)["split"] == split))
    return path


# -------------------------------------------------------------------------------------- training

def config_text(model: str, data: Path, method: str, steps: int, lr: float, batch: int, out: Path) -> str:
    return (f"model: {json.dumps(model)}\nmethod: {method}\n"
            f"data: {{train: {json.dumps(str(data))}, format: forget, max_length: 128}}\n"
            f"train: {{steps: {steps}, batch_size: {batch}, lr: {lr:.6e}, optimizer: adamw, schedule: constant, "
            f"threads: {torch.get_num_threads()}, tensorboard: false, save_every: 0, keep_checkpoints: 100000, seed: 0}}\n"
            f"output_dir: {json.dumps(str(out))}\n")


def _train(text: str) -> dict:
    from unigrad.config import load_config
    from unigrad.train import train
    return train(load_config(None, text=text), progress=False)


@torch.no_grad()
def nll(model, sequences, pad_id: int) -> dict[str, float]:
    """Forget / retain NLL (per-token mean over each side's completion tokens) and the minimum /
    median per-sequence forget NLL (``forget_min``: every forget fact is at least this forgotten)."""
    from unigrad.data.packing import collate
    from unigrad.logprobs import token_logprobs
    was_training = model.training
    model.eval()
    batch = collate(sequences, pad_id=pad_id)
    logp = token_logprobs(model, batch)
    model.train(was_training)
    mask = batch.completion_mask
    out = {}
    for side, name in ((-1.0, "forget"), (1.0, "retain")):
        m = mask * (batch.sign == side).float()[:, None]
        out[name] = float(-(logp * m).sum() / m.sum())
    rows = batch.sign < 0
    per_sequence = -(logp * mask).sum(1)[rows] / mask.sum(1)[rows]
    out["forget_min"], out["forget_median"] = float(per_sequence.min()), float(per_sequence.median())
    return out


def run_scored(text: str, sequences, pad_id: int) -> list[dict[str, float]]:
    """Train through ``unigrad.train.train`` and score the policy at the start and after every
    update; the loop's ``load_model`` (the first model it loads is the policy) and
    ``apply_update`` are wrapped for the run and restored after it."""
    import unigrad.optim
    import unigrad.run as loop
    load, update, held, points = loop.load_model, unigrad.optim.apply_update, {}, []

    def load_and_score(*args, **kwargs):
        model, tokenizer = load(*args, **kwargs)
        if "policy" not in held:
            held["policy"] = model
            points.append(nll(model, sequences, pad_id))
        return model, tokenizer

    def update_and_score(*args, **kwargs):
        norm = update(*args, **kwargs)
        points.append(nll(held["policy"], sequences, pad_id))
        return norm

    loop.load_model, unigrad.optim.apply_update = load_and_score, update_and_score
    try:
        _train(text)
    finally:
        loop.load_model, unigrad.optim.apply_update = load, update
    return points


# ------------------------------------------------------------------------------------- comparing

def retain_at(points: list[dict], level: float, axis: str = "forget") -> float | None:
    """Retain NLL where ``axis`` first reaches ``level`` (linear interpolation between steps)."""
    for a, b in zip(points, points[1:]):
        if a[axis] < level <= b[axis]:
            return a["retain"] + (b["retain"] - a["retain"]) * (level - a[axis]) / (b[axis] - a[axis])
    return None


def compare(ga: list[dict], npo: list[dict], axis: str) -> list[dict]:
    """GA's and NPO's retain NLL at 5 common levels of ``axis``, from the start to the lower of the
    two runs' highest value."""
    start = ga[0][axis]
    top = min(max(p[axis] for p in ga), max(p[axis] for p in npo))
    return [{"level": level, "GA": retain_at(ga, level, axis), "NPO": retain_at(npo, level, axis)}
            for level in (start + (top - start) * q for q in QUANTILES)]


def _compared(rows: list[dict]) -> list[float]:
    return [r["GA"] - r["NPO"] for r in rows if r["GA"] is not None and r["NPO"] is not None]


# ------------------------------------------------------------------------------------------ runs

def _base_model(setting: Setting, work: Path):
    from unigrad.models import load_model, save_model, tiny_random_model, tiny_tokenizer
    if setting.model:
        model, tokenizer = load_model(setting.model)
        del model
        return setting.model, tokenizer
    tokenizer = tiny_tokenizer()
    base = work / "base"
    save_model(tiny_random_model(seed=0, hidden=setting.hidden, layers=setting.layers, tokenizer=tokenizer),
               tokenizer, base)
    return str(base), tokenizer


def run_seed(setting: Setting, seed: int, base: str, tokenizer, work: Path) -> dict:
    """One data seed: SFT on all facts, SFT on the retain facts only (the yardstick), then GA for
    the longest step count and NPO at each β, scored after every update."""
    from unigrad.data import load_dataset_sequences
    from unigrad.models import load_model
    work.mkdir(parents=True, exist_ok=True)
    data = work / "facts.jsonl"
    make_facts(data, setting.n_forget, setting.n_retain, seed)
    sequences = load_dataset_sequences(str(data), "forget", tokenizer, 128)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    scores = {}
    for name, rows, batch in (("sft", data, setting.n_forget + setting.n_retain),
                              ("retain_only_sft", _subset(data, "retain", work / "retain.jsonl"), setting.n_retain)):
        _train(config_text(base, rows, "{name: sft}", setting.sft_steps, setting.sft_lr, batch, work / name))
        model, _ = load_model(str(work / name / "final"))
        scores[name] = nll(model, sequences, pad_id)
        del model
    start, forget = str(work / "sft" / "final"), _subset(data, "forget", work / "forget.jsonl")
    steps = max(setting.betas.values())
    ga = run_scored(config_text(start, forget, "{name: ga}", steps, setting.lr, setting.n_forget, work / "ga"),
                    sequences, pad_id)
    shutil.rmtree(work / "ga", ignore_errors=True)
    runs = {}
    for beta, beta_steps in setting.betas.items():
        npo = run_scored(config_text(start, forget, f"{{name: npo, beta: {beta:.6e}}}", beta_steps, setting.lr,
                                     setting.n_forget, work / "npo"), sequences, pad_id)
        shutil.rmtree(work / "npo", ignore_errors=True)
        runs[f"{beta:g}"] = measure(ga[:beta_steps + 1], npo, scores["retain_only_sft"]["forget"], seed, beta, beta_steps)
    for name in ("sft", "retain_only_sft"):
        shutil.rmtree(work / name, ignore_errors=True)
    return {"sft": scores["sft"], "retain_only_sft": scores["retain_only_sft"], "runs": runs}


def measure(ga: list[dict], npo: list[dict], yardstick: float, seed: int, beta: float, steps: int) -> dict:
    """Everything compared for one (data seed, β): retain NLL at equal forgetting on each axis, at the
    retain-only model's forget NLL, and at the end of the equal-step runs."""
    return {"seed": seed, "beta": beta, "steps": steps,
            "trajectories": {"GA": ga, "NPO": npo},
            "at_equal": {axis: compare(ga, npo, axis) for axis, _ in AXES},
            "at_retain_only_forget_nll": {"forget": yardstick, "GA": retain_at(ga, yardstick),
                                          "NPO": retain_at(npo, yardstick)},
            "end": {"GA": ga[-1], "NPO": npo[-1]}}


# --------------------------------------------------------------------------------------- verdict

def collapsed(run: dict) -> bool:
    """GA collapsed and NPO did not, at equal steps: GA's final retain NLL is above NPO's by more
    than ``COLLAPSE_GAP`` nats and more than ``COLLAPSE_RATIO`` times."""
    ga, npo = run["end"]["GA"]["retain"], run["end"]["NPO"]["retain"]
    return ga > npo + COLLAPSE_GAP and ga > COLLAPSE_RATIO * npo


def decide(runs: list[dict], betas) -> tuple[str, str, dict]:
    """The rule in ``VERDICT_RULE``: a measure is (forget axis, β), its levels pooled over the data
    seeds; NPO must keep the lower retain NLL at ≥ 80% of them."""
    shares = {}
    for beta in betas:
        for axis, label in AXES:
            diffs = [d for r in runs if r["beta"] == beta for d in _compared(r["at_equal"][axis])]
            shares[f"{label}, β={beta:g}"] = (sum(d > 0 for d in diffs), len(diffs))
    passing = [k for k, (won, n) in shares.items() if n and won / n >= SHARE]
    collapse = all(collapsed(r) for r in runs)
    counts = "; ".join(f"{k}: {won}/{n}" for k, (won, n) in shares.items())
    gap = (f"GA's final retain NLL is {'' if collapse else 'not always '}more than {COLLAPSE_GAP:g} nat and "
           f"{COLLAPSE_RATIO:g}× above NPO's")
    if len(passing) == len(shares) and collapse:
        verdict = REPRODUCED
    elif passing or collapse:
        verdict = PARTLY
    else:
        verdict = NOT_REPRODUCED
    reason = (f"NPO's retain NLL is lower at (levels won/compared) {counts}; {len(passing)} of {len(shares)} measures "
              f"reach {SHARE:.0%}; at equal steps {gap}" + (" in every run." if collapse else "."))
    return verdict, reason, {k: {"npo_lower": w, "compared": n} for k, (w, n) in shares.items()}


def _fmt(x: float | None) -> str:
    return "not reached" if x is None else f"{x:.3f}"


def table_rows(runs: list[dict]) -> list[dict]:
    rows = []
    for r in runs:
        row = {"data seed": r["seed"], "β": f"{r['beta']:g}", "steps": r["steps"]}
        for axis, label in AXES:
            diffs = _compared(r["at_equal"][axis])
            row[f"equal {label}: NPO lower / mean(GA−NPO)"] = (f"{sum(d > 0 for d in diffs)}/{len(diffs)}, "
                                                               f"{sum(diffs) / len(diffs):+.3f}" if diffs else "—")
        y = r["at_retain_only_forget_nll"]
        row["at retain-only forget NLL: GA / NPO retain NLL"] = f"{y['forget']:.2f}: {_fmt(y['GA'])} / {_fmt(y['NPO'])}"
        end = r["end"]
        row["end: GA / NPO forget, retain NLL"] = (f"{end['GA']['forget']:.2f}, {end['GA']['retain']:.2f} / "
                                                   f"{end['NPO']['forget']:.2f}, {end['NPO']['retain']:.2f}")
        rows.append(row)
    return rows


def plot(run: dict, path: Path) -> None:
    """Left: forget and retain NLL along each run; right: retain against forget NLL."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, pts in run["trajectories"].items():
        label = label if label == "GA" else f"NPO (β={run['beta']:g})"
        steps = range(len(pts))
        axes[0].plot(steps, [p["forget"] for p in pts], label=f"{label} forget")
        axes[0].plot(steps, [p["retain"] for p in pts], "--", label=f"{label} retain")
        axes[1].plot([p["forget"] for p in pts], [p["retain"] for p in pts], marker=".", label=label)
    axes[1].axvline(run["at_retain_only_forget_nll"]["forget"], color="grey", ls=":", label="retain-only model's forget NLL")
    axes[0].set(xlabel="unlearning step", ylabel="per-token NLL", title=f"data seed {run['seed']}, {run['steps']} steps")
    axes[1].set(xlabel="forget NLL (higher = more forgotten)", ylabel="retain NLL (lower = better kept)",
                title="retain vs forget NLL along each run")
    for ax in axes:
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def notes(runs: list[dict], setting: Setting, shares: dict) -> str:
    """The reading, from these numbers: which measures favour NPO, whether NPO reaches the
    retain-only model's forgetting, and where each run ends at equal steps."""
    share = {k: v["npo_lower"] / v["compared"] for k, v in shares.items() if v["compared"]}
    good = [k for k, v in share.items() if v >= SHARE]
    bad = [k for k, v in share.items() if v < SHARE]
    parts = [f"NPO keeps the retain set better at ≥ {SHARE:.0%} of the levels by: {', '.join(good) or 'no measure'}; "
             f"not by: {', '.join(bad) or 'none'}."]
    for beta in setting.betas:
        mean = share.get(f"mean, β={beta:g}", 0.0)
        if all(share.get(f"{a}, β={beta:g}", 0.0) > mean for a in ("median", "min")):
            parts.append(f"With β = {beta:g} the median and minimum favour NPO more than the mean does: GA reaches a "
                         "mean forget NLL by driving some facts far down, while NPO's weight 2σ(β·h) stops pushing a "
                         "fact already far below the reference, so it forgets more evenly.")
    for beta in setting.betas:
        these = [r for r in runs if r["beta"] == beta]
        never = [r for r in these if r["at_retain_only_forget_nll"]["NPO"] is None]
        if never:
            parts.append(f"β = {beta:g}: NPO's forget NLL ends at "
                         + ", ".join(f"{r['end']['NPO']['forget']:.1f}" for r in never)
                         + " and never reaches the retain-only model's ("
                         + ", ".join(f"{r['at_retain_only_forget_nll']['forget']:.1f}" for r in never)
                         + "): its loss is bounded, so that yardstick cannot decide there.")
        both = [r["at_retain_only_forget_nll"] for r in these
                if None not in (r["at_retain_only_forget_nll"]["GA"], r["at_retain_only_forget_nll"]["NPO"])]
        if both:
            parts.append(f"β = {beta:g}: where the forget NLL reaches the retain-only model's, retain NLL GA vs NPO "
                         + ", ".join(f"{y['GA']:.2f} vs {y['NPO']:.2f}" for y in both)
                         + f" (NPO lower in {sum(y['NPO'] < y['GA'] for y in both)} of {len(both)}).")
        parts.append(f"After {these[0]['steps']} steps at the same lr (β = {beta:g}, data seeds in order) GA stands at "
                     "forget / retain NLL " + ", ".join(f"{r['end']['GA']['forget']:.1f} / {r['end']['GA']['retain']:.2f}"
                                                         for r in these)
                     + " and NPO at " + ", ".join(f"{r['end']['NPO']['forget']:.1f} / {r['end']['NPO']['retain']:.2f}"
                                                   for r in these)
                     + (": GA collapses, NPO does not" if all(collapsed(r) for r in these) else "")
                     + " — a comparison at equal steps, not at equal forgetting.")
    return " ".join(parts)


def summary_line(runs: list[dict], shares: dict, betas) -> str:
    """The one line beside the paper's number: levels won by NPO on each measure, final retain NLLs."""
    won = "; ".join(", ".join(f"{label} {shares[f'{label}, β={b:g}']['npo_lower']}/{shares[f'{label}, β={b:g}']['compared']}"
                              for _, label in AXES) + f" (β={b:g})" for b in betas)
    ends = ", ".join(f"{r['end']['GA']['retain']:.2f} vs {r['end']['NPO']['retain']:.2f} (β={r['beta']:g})" for r in runs)
    return f"NPO's retain NLL lower at equal forgetting, levels won: {won}; final retain NLL GA vs NPO: {ends}"


def run(folder: Path, scale: Scale) -> Outcome:
    setting = scale.pick(FULL, QUICK, TINY)
    seeds = scale.seed_list(setting.data_seeds)
    work = Path(tempfile.mkdtemp(prefix="repro-npo-"))
    try:
        base, tokenizer = _base_model(setting, work)
        per_seed = {}
        for seed in seeds:
            if scale.progress:
                print(f"npo-vs-ga: data seed {seed}", flush=True)
            per_seed[seed] = run_seed(setting, seed, base, tokenizer, work / f"seed{seed}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    runs = [r for s in seeds for r in per_seed[s]["runs"].values()]
    verdict, reason, shares = decide(runs, setting.betas)
    figures = []
    for r in runs:
        name = f"seed{r['seed']}_beta{r['beta']:g}.png"
        plot(r, folder / name)
        figures.append(name)
    numbers = {"setting": vars(setting) | {"betas": {f"{b:g}": s for b, s in setting.betas.items()}},
               "seeds": seeds, "measures": shares,
               "per_seed": {str(s): {"sft": per_seed[s]["sft"], "retain_only_sft": per_seed[s]["retain_only_sft"]}
                            for s in seeds},
               "runs": runs}
    return Outcome(ours=summary_line(runs, shares, setting.betas), verdict=verdict, reason=reason, numbers=numbers,
                   table=table_rows(runs), figures=figures, notes=notes(runs, setting, shares))


VERDICT_RULE = (
    "A measure is one way of equating forgetting (mean, median or minimum per-sequence forget NLL) at one β; its "
    "levels (5 per run) are pooled over the data seeds. Reproduced: NPO's retain NLL is lower than GA's at ≥ 80% of "
    "the compared levels by every measure, and GA collapses while NPO does not: at equal steps GA's final retain NLL "
    "exceeds NPO's by more than 1 nat and more than 2× in every run. Partly reproduced: at least one measure reaches "
    "80%, or only the collapse holds. Not reproduced: no measure reaches 80% and the collapse does not hold. The "
    "retain-only yardstick is reported beside it, not voted: a method that never reaches that forget NLL leaves it "
    "undecided.")

REPRODUCTION = Reproduction(
    name="npo-vs-ga",
    title="NPO vs gradient ascent at equal forgetting",
    claim=Claim(
        paper="Zhang, Lin, Bai, Mei (2024), Negative Preference Optimization: From Catastrophic Collapse to Effective "
              "Unlearning (COLM 2024, arXiv 2404.05868)",
        where="abstract and §5 (TOFU: forget quality vs model utility); the collapse rate of GA vs NPO in §4",
        statement="NPO keeps the model's utility (retain performance) better than gradient ascent at the same amount "
                  "of forgetting; GA collapses the model, NPO does so exponentially more slowly.",
        paper_number="TOFU (Llama-2-7B): NPO-based methods unlearn 50% of the data with reasonable utility, where "
                     "GA-based methods already struggle at 10%; β = 0.1"),
    setting=("SmolLM2-135M-Instruct (pretrained, chat template) fully fine-tuned with sft (40 full-batch steps, lr 2e-4) "
             "on 10 forget + 30 retain made-up facts (answer-only completions) until both NLLs are < 1e-4; then GA and "
             "NPO from that checkpoint through unigrad.train.train: AdamW, lr 1e-5 (the paper's), constant schedule, "
             "clipping 1.0, full batch of the forget rows; NPO β = 0.1 for 30 steps and β = 1 for 90 steps; GA for 90 "
             "steps (its first 30 are the β = 0.1 comparison); 3 data seeds. --quick: the tiny random byte-level Llama "
             "(hidden 128 × 2 layers), 20 forget + 40 retain facts, sft 400 steps at lr 1e-3, GA/NPO 60 steps at lr "
             "1e-4, β = 0.1 and 1, data seed 0. --tiny: hidden 32 × 1 layer, 6 + 6 facts, a few steps."),
    measure=("Retain NLL (per-token mean over the retain completions) of each method where its forget NLL first "
             "reaches each of 5 common levels, forgetting measured three ways (mean per-token forget NLL; median and "
             "minimum per-sequence forget NLL); the retain NLL where the forget NLL reaches the retain-only model's; "
             "the final forget and retain NLL at equal steps."),
    verdict_rule=VERDICT_RULE,
    run=run,
)

__all__ = ["REPRODUCTION", "compare", "decide", "make_facts", "nll", "retain_at"]
