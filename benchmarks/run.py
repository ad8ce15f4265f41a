"""unigrad vs TRL: SFT and DPO on SmolLM2-135M-Instruct, float32, CPU. One command:

    .venv/bin/python benchmarks/run.py [--reps 3] [--steps 6] [--batch 4] [--methods sft dpo]

Needs the project venv (.venv, runs unigrad and this script) and a TRL venv (.venv-bench, see
benchmarks/RESULTS.md). For each method: unigrad's own tokenisation of the shipped data is exported
(in the order unigrad's steps draw it) so TRL trains on identical token ids in identical batches;
then unigrad and TRL run alternately, one fresh process per repetition. Each child reports the
time of every optimiser step (end of step to end of step), its losses and its peak RSS; the first
step (warm-up) is not timed. Tokens per step = prompt + completion tokens of every sequence in the
step (a DPO pair counts both prompt+chosen and prompt+rejected), the same count for both frameworks.
Writes benchmarks/results/trl_compare.json and prints a Markdown table of medians and ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
UNIGRAD_PY = ROOT / ".venv/bin/python"
TRL_PY = Path(os.environ.get("TRL_PYTHON", ROOT / ".venv-bench/bin/python"))
WORK = Path(os.environ.get("BENCH_WORK", "/tmp/unigrad-bench"))
DATA = ROOT / "src/unigrad/resources/data"


def export_data(method: str, steps: int, batch: int) -> tuple[Path, list[int]]:
    """unigrad's token ids for the examples of steps 0..steps-1, in step order; tokens per step."""
    from unigrad.data import load_dataset_sequences
    from unigrad.experience import Split, step_units
    from unigrad.models import load_model
    _, tokenizer = load_model("smollm2-135m-instruct")
    fmt, path = ("sft", DATA / "sft/train.jsonl") if method == "sft" else ("pairs", DATA / "pairs/train.jsonl")
    limit = steps * batch
    split = Split.of("train", load_dataset_sequences(str(path), fmt, tokenizer, 256, limit=limit))
    rows, tokens = [], []
    for step in range(steps):
        n = 0
        for unit in step_units(len(split.units), batch, step, 0):
            seqs = [split.sequences[i] for i in split.units[unit]]
            n += sum(s.length for s in seqs)
            if fmt == "sft":
                rows.append({"prompt_ids": list(seqs[0].prompt_ids), "completion_ids": list(seqs[0].completion_ids)})
            else:
                chosen, rejected = sorted(seqs, key=lambda s: -s.sign)
                assert chosen.prompt_ids == rejected.prompt_ids
                rows.append({"prompt_ids": list(chosen.prompt_ids), "chosen_ids": list(chosen.completion_ids),
                             "rejected_ids": list(rejected.completion_ids)})
        tokens.append(n)
    out = WORK / f"{method}-data.json"
    out.write_text(json.dumps(rows))
    return out, tokens


def run_child(cmd: list[str], log: Path) -> dict:
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"})
    log.write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("BENCH_RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"{' '.join(cmd)} failed (rc={proc.returncode}); see {log}")
    result = json.loads(lines[-1][len("BENCH_RESULT "):])
    result["process_s"] = time.perf_counter() - started
    return result


def steady(result: dict, tokens: list[int]) -> dict:
    ends = result["step_ends"]
    seconds = ends[-1] - ends[0]                 # steps 2..N (end of step 1 to end of step N)
    n = sum(tokens[1:len(ends)])
    return {"tokens_per_s": n / seconds, "step_s": seconds / (len(ends) - 1), "tokens": n,
            "peak_rss_mb": result["peak_rss_kb_end"] / 1024, "first_loss": result["losses"][0],
            "losses": result["losses"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--methods", nargs="+", default=["sft", "dpo"])
    parser.add_argument("--trl-optim", default="adamw_torch",
                        help="TRL's optim; adamw_torch = torch AdamW as unigrad uses it (TRL's default is adamw_torch_fused)")
    parser.add_argument("--unigrad-fused-adamw", action="store_true",
                        help="what-if: patch torch.optim.AdamW(fused=True) into the unigrad child (not what unigrad ships)")
    parser.add_argument("--frameworks", nargs="+", default=["unigrad", "trl"])
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/trl_compare.json"))
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    if args.unigrad_fused_adamw:
        os.environ["UNIGRAD_BENCH_FUSED_ADAMW"] = "1"
    from unigrad.models import embedded_model_folder
    folder = str(embedded_model_folder())
    report = {"args": vars(args), "methods": {}}
    for method in args.methods:
        data_json, tokens = export_data(method, args.steps, args.batch)
        runs = {fw: [] for fw in args.frameworks}
        for rep in range(args.reps):
            for framework in args.frameworks:
                out_dir = WORK / f"{framework}-{method}-{rep}"
                # a fresh output folder: unigrad reuses a reference_logps.safetensors it finds there
                shutil.rmtree(out_dir, ignore_errors=True)
                if framework == "unigrad":
                    cmd = [str(UNIGRAD_PY), "benchmarks/bench_unigrad.py", method, str(args.steps), str(args.batch), str(out_dir)]
                else:
                    cmd = [str(TRL_PY), "benchmarks/bench_trl.py", method, str(args.steps), str(args.batch), str(out_dir),
                           folder, str(data_json), args.trl_optim]
                raw = run_child(cmd, WORK / f"{framework}-{method}-{rep}.log")
                row = steady(raw, tokens)
                row["raw"] = raw
                runs[framework].append(row)
                print(f"{method} rep {rep} {framework:8s} {row['tokens_per_s']:8.1f} tok/s  {row['step_s']:6.2f} s/step  "
                      f"peak RSS {row['peak_rss_mb']:7.0f} MB  losses {[round(x, 5) for x in row['losses']]}", flush=True)
        med = {fw: {key: statistics.median(r[key] for r in rs) for key in ("tokens_per_s", "step_s", "peak_rss_mb")}
               for fw, rs in runs.items()}
        for fw in runs:
            med[fw]["first_loss"] = runs[fw][0]["first_loss"]
        report["methods"][method] = {"tokens_per_step": tokens, "runs": runs, "median": med}
        if len(runs) == 2:
            report["methods"][method].update(
                ratio_tokens_per_s=med["unigrad"]["tokens_per_s"] / med["trl"]["tokens_per_s"],
                ratio_peak_rss=med["unigrad"]["peak_rss_mb"] / med["trl"]["peak_rss_mb"])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    if len(args.frameworks) != 2:
        for method, m in report["methods"].items():
            for fw, med in m["median"].items():
                print(f"{method} {fw}: {med['tokens_per_s']:.1f} tok/s, {med['step_s']:.2f} s/step, "
                      f"peak RSS {med['peak_rss_mb']:.0f} MB, first loss {med['first_loss']:.6f}")
        print(f"wrote {args.out}")
        return
    print("\n| method | unigrad tok/s | TRL tok/s | ratio | unigrad peak RSS MB | TRL peak RSS MB | ratio | first loss unigrad | first loss TRL | |Δ| |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for method, m in report["methods"].items():
        u, t = m["median"]["unigrad"], m["median"]["trl"]
        print(f"| {method} | {u['tokens_per_s']:.1f} | {t['tokens_per_s']:.1f} | {m['ratio_tokens_per_s']:.2f}× | "
              f"{u['peak_rss_mb']:.0f} | {t['peak_rss_mb']:.0f} | {m['ratio_peak_rss']:.2f}× | {u['first_loss']:.6f} | "
              f"{t['first_loss']:.6f} | {abs(u['first_loss'] - t['first_loss']):.1e} |")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
