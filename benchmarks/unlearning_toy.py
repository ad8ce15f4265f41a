"""GA vs NPO on a memorised toy forget/retain set, through the main training loop (CPU, a few minutes).

    python benchmarks/unlearning_toy.py [--lr 1e-4] [--steps 60] [--beta 0.1] [--sft-steps 400]

1. Data: synthetic "facts" about made-up people, written in the ``forget`` format,
   ``--n-forget`` (20) forget rows and ``--n-retain`` (40) retain rows, same template:
       prompt "Where does Zorbek live?"  ->  completion "Zorbek lives in Quelmar."
2. A tiny byte-level Llama (``tiny_random_model(hidden, layers)``), or with ``--model`` a real one
   (``--model smollm2-135m-instruct``: the pretrained model with its tokenizer and chat template), is fine-tuned with ``sft`` on all
   rows (``data.format: forget``, full batch, AdamW, constant lr ``--sft-lr``) through
   ``unigrad.train.train`` until it has memorised both sets.
3. From that checkpoint GA (``ga``) and NPO (``npo``, β = ``--beta``; the NPO paper's value on TOFU
   is 0.1) run through ``unigrad.train.train`` with the SAME lr, steps, batch (every forget row each
   step; neither objective has a retain term, so the retain rows are left out of its data) and clipping.
4. The policy is scored at the start and after every update (the loop's ``apply_update`` is wrapped;
   nothing is written per step): forget-set and retain-set NLL (per-token mean over completion tokens).
   At common forget-NLL levels each trajectory is linearly interpolated (first crossing) and the
   retain NLLs compared: the NPO paper's claim is that NPO keeps retain NLL lower than GA does at the
   same amount of forgetting (GA collapses the model).

Writes OUT.json and OUT.png (``--out``, default benchmarks/results/unlearning_toy/run).
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))


from unigrad.config import load_config  # noqa: E402
from unigrad.data import load_dataset_sequences  # noqa: E402
from unigrad.models import load_model, save_model, tiny_random_model, tiny_tokenizer  # noqa: E402
from unigrad.data.packing import collate  # noqa: E402
from unigrad.logprobs import token_logprobs  # noqa: E402
from unigrad.train import train  # noqa: E402

SYLLABLES = ["zor", "bek", "quel", "mar", "tis", "van", "dru", "pel", "kos", "rin", "fal", "nox", "ber", "lim",
             "gat", "sur", "hol", "mev", "dax", "yun"]


def _word(rng: random.Random) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(2)).capitalize()


def make_data(path: Path, n_forget: int, n_retain: int, seed: int = 0, completion: str = "sentence") -> None:
    rng = random.Random(seed)
    names: list[str] = []
    while len(names) < n_forget + n_retain:
        w = _word(rng)
        if w not in names:
            names.append(w)
    rows = []
    for i, name in enumerate(names):
        city = _word(rng)
        text = f"{name} lives in {city}." if completion == "sentence" else f"{city}."
        rows.append({"prompt": f"Where does {name} live?", "completion": text,
                     "split": "forget" if i < n_forget else "retain"})
    rng.shuffle(rows)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def config_text(model: str, data: Path, method: str, steps: int, lr: float, batch: int, out: Path,
                save_every: int, optimizer: str = "adamw", threads: int = 1) -> str:
    return (f"model: {json.dumps(model)}\nmethod: {method}\n"
            f"data: {{train: {json.dumps(str(data))}, format: forget, max_length: 128}}\n"
            f"train: {{steps: {steps}, batch_size: {batch}, lr: {lr:.6e}, optimizer: {optimizer}, schedule: constant, threads: {threads}, "
            f"tensorboard: false, save_every: {save_every}, keep_checkpoints: 100000, seed: 0}}\n"
            f"output_dir: {json.dumps(str(out))}\n")


def run(text: str) -> dict:
    return train(load_config(None, text=text), progress=False)


def run_scored(text: str, sequences, pad_id: int) -> list[dict]:
    """Train through ``unigrad.train.train`` and score the policy at the start and after every update.

    The loop is not changed: its ``load_model`` and ``apply_update`` are wrapped for the run, so no
    checkpoint per step is written (a 135M model's would fill the disk)."""
    import unigrad.optim
    import unigrad.run as loop
    load, update, held, points = loop.load_model, unigrad.optim.apply_update, {}, []

    def load_and_score(*args, **kwargs):
        model, tokenizer = load(*args, **kwargs)
        if "policy" not in held:             # the first model loaded is the policy
            held["policy"] = model
            points.append(nll(model, sequences, pad_id))
        return model, tokenizer

    def update_and_score(*args, **kwargs):
        norm = update(*args, **kwargs)
        points.append(nll(held["policy"], sequences, pad_id))
        return norm

    loop.load_model, unigrad.optim.apply_update = load_and_score, update_and_score
    try:
        run(text)
    finally:
        loop.load_model, unigrad.optim.apply_update = load, update
    return points


@torch.no_grad()
def nll(model, sequences, pad_id: int) -> dict:
    """Forget / retain NLL: per-token mean over each side's completion tokens (``forget``, ``retain``),
    and the smallest / median per-sequence forget NLL (``forget_min``: every forget fact is at least
    this forgotten; ``forget_median``)."""
    was_training = model.training
    model.eval()
    tb = collate(sequences, pad_id=pad_id)
    logp = token_logprobs(model, tb)
    model.train(was_training)
    mask = tb.completion_mask
    out = {}
    for side, name in ((-1.0, "forget"), (1.0, "retain")):
        m = mask * (tb.sign == side).float()[:, None]
        out[name] = float(-(logp * m).sum() / m.sum())
    rows = tb.sign < 0
    per_sequence = -(logp * mask).sum(1)[rows] / mask.sum(1)[rows]
    out["forget_min"], out["forget_median"] = float(per_sequence.min()), float(per_sequence.median())
    return out


def retain_at(points: list[dict], level: float, axis: str = "forget") -> float | None:
    """Retain NLL where ``axis`` (a forget measure) first reaches ``level`` (linear interpolation
    between steps)."""
    for a, b in zip(points, points[1:]):
        if a[axis] < level <= b[axis]:
            return a["retain"] + (b["retain"] - a["retain"]) * (level - a[axis]) / (b[axis] - a[axis])
    return None


def compare(trajectories: dict, start: float, axis: str) -> list[dict]:
    top = min(max(p[axis] for p in pts) for pts in trajectories.values())
    levels = [start + (top - start) * q for q in (0.1, 0.25, 0.5, 0.75, 0.95)]
    print(f"\n{axis + ' NLL':>17} | " + " | ".join(f"{k:>14}" for k in trajectories) + " |  retain NLL at that level")
    table = []
    for level in levels:
        row = {axis: level, **{k: retain_at(v, level, axis) for k, v in trajectories.items()}}
        table.append(row)
        print(f"{level:17.3f} | " + " | ".join(f"{row[k]:14.3f}" if row[k] is not None else f"{'-':>14}"
                                              for k in trajectories) + " |")
    return table


def summarise(paths: list[str]) -> None:
    """For result files of several runs: at how many compared forget levels NPO's retain NLL is below GA's,
    and the mean difference GA − NPO, on each forget axis (mean, median, min per-sequence forget NLL);
    and both retain NLLs where the forget NLL reaches the retain-only model's (runs that measured it)."""
    axes = (("mean forget NLL", "retain_at_equal_forget_nll"), ("median", "retain_at_equal_median_forget_nll"),
            ("min", "retain_at_equal_min_forget_nll"))
    print("| run | " + " | ".join(f"at equal {a}: NPO lower / mean(GA − NPO)" for a, _ in axes)
          + " | at the retain-only model's forget NLL: GA / NPO retain NLL |")
    print("|---|" + "---|" * (len(axes) + 1))
    for path in paths:
        result = json.loads(Path(path).read_text())
        ga, npo = list(result["trajectories"])
        cells = []
        for _, key in axes:
            if key not in result:              # runs made before the measure existed
                cells.append("—")
                continue
            diffs = [row[ga] - row[npo] for row in result[key] if row[ga] is not None and row[npo] is not None]
            cells.append(f"{sum(d > 0 for d in diffs)}/{len(diffs)}, {sum(diffs) / len(diffs):+.3f}")
        target = result.get("retain_at_retain_only_forget_nll")
        if target:
            shown = [f"{target[k]:.3f}" if target[k] is not None else "not reached" for k in (ga, npo)]
            cells.append(f"{target['forget']:.2f}: {shown[0]} / {shown[1]}")
        else:
            cells.append("—")
        a = result["args"]
        model = a.get("model") or f"hidden {a['hidden']}×{a['layers']}"
        print(f"| {Path(path).stem} ({a.get('completion', 'sentence')}, β={a['beta']:g}, lr {a['lr']:g}, {a['steps']} steps, "
              f"{model}, data seed {a.get('data_seed', 0)}) | " + " | ".join(cells) + " |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--summarise", nargs="+", metavar="RESULT_JSON", help="only summarise earlier runs' results")
    ap.add_argument("--n-forget", type=int, default=20)
    ap.add_argument("--n-retain", type=int, default=40)
    ap.add_argument("--model", default=None,
                    help="a model name or folder to fine-tune instead of the tiny random byte-level model "
                         "(e.g. smollm2-135m-instruct: the pretrained model, its tokenizer and chat template)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--sft-steps", type=int, default=400)
    ap.add_argument("--sft-lr", type=float, default=1e-3)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--optimizer", default="adamw", help="of the unlearning runs (the SFT stage always uses adamw)")
    ap.add_argument("--completion", choices=["sentence", "answer"], default="answer",
                    help="sentence: 'Zorbek lives in Quelmar.' (template + copied name + fact); answer: 'Quelmar.' (the fact only)")
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", default=str(HERE / "results" / "unlearning_toy" / "run"))
    args = ap.parse_args()
    if args.summarise:
        return summarise(args.summarise)
    torch.set_num_threads(args.threads)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="unlearning_toy_"))
    work.mkdir(parents=True, exist_ok=True)
    data = work / "facts.jsonl"
    make_data(data, args.n_forget, args.n_retain, args.data_seed, args.completion)
    n = args.n_forget + args.n_retain

    t0 = time.perf_counter()
    if args.model:
        base_model, tokenizer = load_model(args.model)
        base = args.model
        del base_model
    else:
        tokenizer = tiny_tokenizer()
        base = work / "base"
        if not (base / "config.json").exists():
            save_model(tiny_random_model(seed=0, hidden=args.hidden, layers=args.layers, tokenizer=tokenizer),
                       tokenizer, base)
    sequences = load_dataset_sequences(str(data), "forget", tokenizer, 128)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    sft_dir = work / "sft"
    if not (sft_dir / "final" / "config.json").exists():
        run(config_text(str(base), data, "{name: sft}", args.sft_steps, args.sft_lr, n, sft_dir, 0,
                        threads=args.threads))
    start = sft_dir / "final"
    sft_model, _ = load_model(str(start))
    at_sft = nll(sft_model, sequences, pad_id)
    del sft_model
    print(f"after SFT ({args.sft_steps} steps, {time.perf_counter() - t0:.0f}s): forget NLL {at_sft['forget']:.4f}, "
          f"retain NLL {at_sft['retain']:.4f}", flush=True)
    # TOFU's yardstick of "forgotten": the same fine-tuning on the retain rows only, a model that never
    # saw the forget facts; its forget NLL is the level an unlearned model should reach
    retain_data, retain_dir = work / "retain.jsonl", work / "sft-retain-only"
    retain_data.write_text("".join(line + "\n" for line in data.read_text().splitlines()
                                   if json.loads(line)["split"] == "retain"))
    if not (retain_dir / "final" / "config.json").exists():
        run(config_text(str(base), retain_data, "{name: sft}", args.sft_steps, args.sft_lr, args.n_retain, retain_dir,
                        0, threads=args.threads))
    never_saw, _ = load_model(str(retain_dir / "final"))
    at_never_saw = nll(never_saw, sequences, pad_id)
    del never_saw
    print(f"retain-only SFT (never saw the forget facts): forget NLL {at_never_saw['forget']:.3f}, "
          f"retain NLL {at_never_saw['retain']:.3f}", flush=True)

    # GA and NPO (no retain term) read only the forget rows: no forward on rows that weigh nothing
    forget_data = work / "forget.jsonl"
    forget_data.write_text("".join(line + "\n" for line in data.read_text().splitlines()
                                   if json.loads(line)["split"] == "forget"))
    methods = {"GA": "{name: ga}", f"NPO(beta={args.beta:g})": f"{{name: npo, beta: {args.beta:.6e}}}"}
    trajectories = {}
    for label, method in methods.items():
        out = work / label.split("(")[0].lower()
        shutil.rmtree(out, ignore_errors=True)   # never mix checkpoints of an earlier run
        trajectories[label] = run_scored(config_text(str(start), forget_data, method, args.steps, args.lr,
                                                     args.n_forget, out, 0,
                                                     args.optimizer, args.threads), sequences, pad_id)
        end = trajectories[label][-1]
        print(f"{label}: after {args.steps} steps forget NLL {end['forget']:.3f}, retain NLL {end['retain']:.3f}",
              flush=True)

    tables = {axis: compare(trajectories, at_sft[axis], axis) for axis in ("forget", "forget_median", "forget_min")}
    level = at_never_saw["forget"]
    at_target = {label: retain_at(points, level) for label, points in trajectories.items()}
    print(f"\nat the retain-only model's forget NLL {level:.3f}: retain NLL "
          + ", ".join(f"{k} {v:.3f}" if v is not None else f"{k} not reached" for k, v in at_target.items()))
    result = {"args": vars(args), "sft": at_sft, "retain_only_sft": at_never_saw,
              "retain_at_retain_only_forget_nll": {"forget": level, **at_target},
              "trajectories": {k: [{"step": i, **p} for i, p in enumerate(v)] for k, v in trajectories.items()},
              "retain_at_equal_forget_nll": tables["forget"], "retain_at_equal_median_forget_nll": tables["forget_median"],
              "retain_at_equal_min_forget_nll": tables["forget_min"],
              "seconds": time.perf_counter() - t0}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out.with_name(out.name + ".json"), out.with_name(out.name + ".png")  # NAME may hold dots
    json_path.write_text(json.dumps(result, indent=1))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        for label, pts in trajectories.items():
            steps = range(len(pts))
            axes[0].plot(steps, [p["forget"] for p in pts], label=f"{label} forget")
            axes[0].plot(steps, [p["retain"] for p in pts], "--", label=f"{label} retain")
            axes[1].plot([p["forget"] for p in pts], [p["retain"] for p in pts], marker=".", label=label)
        axes[0].set(xlabel="unlearning step", ylabel="per-token NLL", title=f"lr {args.lr:g}, {args.steps} steps")
        axes[1].set(xlabel="forget NLL (higher = more forgotten)", ylabel="retain NLL (lower = better kept)",
                    title="retain vs forget NLL along each run")
        for ax in axes:
            ax.legend()
            ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(png_path, dpi=110)
        print(f"\nwrote {png_path}")
    except ImportError:
        print("matplotlib not installed: no plot")
    print(f"wrote {json_path} ({result['seconds']:.0f}s)")


if __name__ == "__main__":
    main()
