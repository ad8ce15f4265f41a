"""unigrad vs TRL: SFT, DPO and GRPO on SmolLM2-135M-Instruct, float32, CPU. One command:

    .venv/bin/python benchmarks/run.py [--reps 3] [--steps 6] [--grpo-steps 4] [--batch 4]
                                       [--methods sft dpo grpo sft-noclip] [--threads N] [--no-markdown]

Needs the project venv (.venv, runs unigrad and this script) and a TRL venv (.venv-bench, see
benchmarks/RESULTS.md). For each method: unigrad's own tokenisation of the shipped data is exported
(in the order unigrad's steps draw it) so TRL trains on identical token ids in identical batches;
then unigrad and TRL run alternately, one fresh process per repetition. Each child reports the
time of every optimiser step (end of step to end of step), its losses and its peak RSS; the first
step (warm-up) is not timed. Tokens per step = prompt + completion tokens of every sequence in the
step (a DPO pair counts both prompt+chosen and prompt+rejected), the same count for both frameworks.
Writes benchmarks/results/trl_compare.json and prints a Markdown table of medians and ratios; then, in
the same invocation, benchmarks/mfu.py (matmul peak, MFU) and benchmarks/bench_profile.py (profile of a
unigrad SFT step), and benchmarks/results_md.py renders benchmarks/RESULTS.md from all of it (~17 min here).

GRPO (``--methods grpo``): one step = generation + reward + training of BATCH prompts × 4 samples
(max 64 new tokens, temperature 1) of unigrad's built-in arithmetic task; unigrad's prompt ids are
exported in its step order and TRL gets the same prompts (both children report the prompt ids they
used; they are checked against the export). Samples differ between the frameworks, so tokens per step
(prompt + completion tokens of the step's 16 sequences) are counted per run, and each child reports
where the step's time goes (generation, rest of the rollout, training). The timed first-step losses
are not comparable; a separate, untimed replay check feeds the completions unigrad sampled at step 1
(rep 0) to TRL in place of its generation and compares both first-step losses and gradient norms.
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
# grpo's prompts: must equal GRPO_TASK in bench_unigrad.py (the children's reported prompt ids are checked)
GRPO_TASK = {"name": "arithmetic", "train_size": 500, "eval_size": 0, "difficulty": 2, "seed": 0}
GRPO_GENERATIONS = 4


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


def export_prompts(steps: int, batch: int) -> tuple[Path, list[list[list[int]]]]:
    """grpo: the prompts of steps 0..steps-1 (text, answer, unigrad's prompt token ids) in step order,
    drawn as unigrad's training loop draws them (load_prompt_splits, step_units with train.seed 0)."""
    from types import SimpleNamespace

    from unigrad.data.prompts import load_prompt_splits
    from unigrad.experience import step_units
    from unigrad.models import load_model
    _, tokenizer = load_model("smollm2-135m-instruct")
    config = SimpleNamespace(data=SimpleNamespace(task=SimpleNamespace(**GRPO_TASK)))
    examples, _ = load_prompt_splits(config, tokenizer, lambda path: path)
    rows, step_ids = [], []
    for step in range(steps):
        units = step_units(len(examples), batch, step, 0)
        step_ids.append([list(examples[u].prompt_ids) for u in units])
        for u in units:
            (role, text), = examples[u].prompt
            assert role == "user"
            rows.append({"prompt": text, "answer": examples[u].answer, "prompt_ids": list(examples[u].prompt_ids)})
    out = WORK / "grpo-data.json"
    out.write_text(json.dumps(rows))
    return out, step_ids


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


def steady(result: dict, tokens: list[int] | None) -> dict:
    ends = result["step_ends"]
    seconds = ends[-1] - ends[0]                 # steps 2..N (end of step 1 to end of step N)
    tokens = result["step_tokens"] if tokens is None else tokens    # grpo: the run's own samples
    n = sum(tokens[1:len(ends)])
    return {"tokens_per_s": n / seconds, "step_s": seconds / (len(ends) - 1), "tokens": n,
            "peak_rss_mb": result["peak_rss_kb_end"] / 1024, "first_loss": result["losses"][0],
            "losses": result["losses"]}


def phases(result: dict) -> dict:
    """grpo: mean seconds per step (steps 2..N) spent before the rollout (logging, data loading), in
    generation, in the rest of the rollout (decoding, reward, advantages, padding) and in training
    (log-probs, loss, backward, clip, optimiser), and the mean completion tokens per step."""
    ends, gens, rolls = result["step_ends"], result["generation_spans"], result["rollout_spans"]
    if not (len(ends) == len(gens) == len(rolls)):
        raise RuntimeError(f"grpo: {len(ends)} steps but {len(gens)} generations and {len(rolls)} rollouts")
    out = {"pre_s": 0.0, "generation_s": 0.0, "rollout_other_s": 0.0, "train_s": 0.0}
    steps = range(1, len(ends))
    for i in steps:
        out["pre_s"] += rolls[i][0] - ends[i - 1]
        out["generation_s"] += gens[i][1] - gens[i][0]
        out["rollout_other_s"] += (rolls[i][1] - rolls[i][0]) - (gens[i][1] - gens[i][0])
        out["train_s"] += ends[i] - rolls[i][1]
    out = {key: value / len(steps) for key, value in out.items()}
    out["completion_tokens_per_step"] = statistics.mean(result["step_completion_tokens"][1:len(ends)])
    out["tokens_per_step"] = statistics.mean(result["step_tokens"][1:len(ends)])
    out["generation_share"] = out["generation_s"] / (ends[-1] - ends[0]) * len(steps)
    return out


def check_prompts(result: dict, step_ids: list, name: str) -> None:
    """grpo: the prompt ids a child actually used, step by step, are unigrad's exported ones."""
    used = result["step_prompt_ids"]
    if used != step_ids[:len(used)] or len(used) != len(result["step_ends"]):
        raise RuntimeError(f"{name}: the prompt token ids it used differ from unigrad's export")


def replay_check(unigrad_raw: dict, step_ids: list, folder: str, data_json: Path, optim: str) -> dict:
    """TRL's first step on the completions unigrad sampled at its step 1 (untimed): loss, pre-clip
    gradient norm and rewards of both."""
    replay_file = unigrad_raw["replay_file"]
    replay = json.loads(Path(replay_file).read_text())
    n = GRPO_GENERATIONS
    if [replay["prompt_ids"][i] for i in range(0, len(replay["prompt_ids"]), n)] != step_ids[0]:
        raise RuntimeError("replay: unigrad's step-1 prompts differ from the export")
    out_dir = WORK / "trl-grpo-replay"
    shutil.rmtree(out_dir, ignore_errors=True)
    cmd = [str(TRL_PY), "benchmarks/bench_trl.py", "grpo", "1", str(len(step_ids[0])), str(out_dir), folder,
           str(data_json), optim, replay_file]
    trl = run_child(cmd, WORK / "trl-grpo-replay.log")
    rewards = replay["rewards"]
    groups = [rewards[i:i + n] for i in range(0, len(rewards), n)]
    u_loss, t_loss = unigrad_raw["losses"][0], trl["losses"][0]
    u_grad, t_grad = unigrad_raw["grad_norms"][0], trl["grad_norms"][0]
    return {"unigrad_loss": u_loss, "trl_loss": t_loss, "loss_abs_diff": abs(u_loss - t_loss),
            "unigrad_objective": unigrad_raw["objectives"][0],
            "unigrad_grad_norm": u_grad, "trl_grad_norm": t_grad, "grad_norm_abs_diff": abs(u_grad - t_grad),
            "grad_norm_rel_diff": abs(u_grad - t_grad) / max(abs(u_grad), 1e-30),
            "agree_1e-4": abs(u_loss - t_loss) <= 1e-4 and abs(u_grad - t_grad) <= 1e-4,
            "rewards_unigrad": rewards, "rewards_trl": trl["replay_rewards"],
            "rewards_equal": rewards == trl["replay_rewards"],
            "informative_groups": sum(len(set(g)) > 1 for g in groups), "groups": len(groups),
            "completion_tokens": sum(len(c) for c in replay["completion_ids"]), "trl_raw": trl}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--grpo-steps", type=int, default=4, help="steps of each GRPO run (generation is slow)")
    parser.add_argument("--methods", nargs="+", default=["sft", "dpo", "grpo", "sft-noclip"],
                        help="sft, dpo, grpo; sft-noclip / dpo-noclip: the memory comparison (no grad-norm clip on "
                             "either side, unigrad with train.optimizer_in_backward)")
    parser.add_argument("--trl-optim", default="adamw_torch_fused",
                        help="TRL's optim; its default adamw_torch_fused is what unigrad's adamw is (fused torch AdamW)")
    parser.add_argument("--no-markdown", action="store_true", help="do not rewrite benchmarks/RESULTS.md")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads in every child (sets OMP_NUM_THREADS / MKL_NUM_THREADS); default: inherit")
    parser.add_argument("--frameworks", nargs="+", default=["unigrad", "trl"])
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/trl_compare.json"))
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
    from unigrad.models import embedded_model_folder
    folder = str(embedded_model_folder())
    report = {"args": vars(args), "methods": {}, "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    wall = time.perf_counter()
    for method in args.methods:
        trl_optim = args.trl_optim
        steps = args.grpo_steps if method == "grpo" else args.steps
        if method == "grpo":
            (data_json, step_ids), tokens = export_prompts(steps, args.batch), None
        else:
            data_json, tokens = export_data(method.removesuffix("-noclip"), steps, args.batch)
        runs = {fw: [] for fw in args.frameworks}
        for rep in range(args.reps):
            for framework in args.frameworks:
                out_dir = WORK / f"{framework}-{method}-{rep}"
                # a fresh output folder: unigrad reuses a reference_logps.safetensors it finds there
                shutil.rmtree(out_dir, ignore_errors=True)
                if framework == "unigrad":
                    cmd = [str(UNIGRAD_PY), "benchmarks/bench_unigrad.py", method, str(steps), str(args.batch), str(out_dir)]
                else:
                    cmd = [str(TRL_PY), "benchmarks/bench_trl.py", method, str(steps), str(args.batch), str(out_dir),
                           folder, str(data_json), trl_optim]
                raw = run_child(cmd, WORK / f"{framework}-{method}-{rep}.log")
                row = steady(raw, tokens)
                if method == "grpo":
                    check_prompts(raw, step_ids, f"{framework} rep {rep}")
                    row["phases"] = phases(raw)
                row["raw"] = raw
                runs[framework].append(row)
                print(f"{method} rep {rep} {framework:8s} {row['tokens_per_s']:8.1f} tok/s  {row['step_s']:6.2f} s/step  "
                      f"peak RSS {row['peak_rss_mb']:7.0f} MB  losses {[round(x, 5) for x in row['losses']]}", flush=True)
        med = {fw: {key: statistics.median(r[key] for r in rs) for key in ("tokens_per_s", "step_s", "peak_rss_mb")}
               for fw, rs in runs.items()}
        for fw, rs in runs.items():
            med[fw]["first_loss"] = rs[0]["first_loss"]
            if method == "grpo":
                med[fw]["phases"] = {key: statistics.median(r["phases"][key] for r in rs) for key in rs[0]["phases"]}
        report["methods"][method] = {"tokens_per_step": tokens, "runs": runs, "median": med, "trl_optim": trl_optim}
        if method == "grpo":
            report["methods"][method]["tokens_per_step"] = {fw: [r["raw"]["step_tokens"] for r in rs] for fw, rs in runs.items()}
            report["methods"][method]["prompt_ids_match_export"] = True   # check_prompts raised otherwise
            if len(runs) == 2:
                replay = replay_check(runs["unigrad"][0]["raw"], step_ids, folder, data_json, trl_optim)
                report["methods"][method]["replay"] = replay
                print(f"grpo replay: loss unigrad {replay['unigrad_loss']:.8f} TRL {replay['trl_loss']:.8f}  "
                      f"grad norm unigrad {replay['unigrad_grad_norm']:.8f} TRL {replay['trl_grad_norm']:.8f}  "
                      f"rewards equal {replay['rewards_equal']}", flush=True)
        if len(runs) == 2:
            report["methods"][method].update(
                ratio_tokens_per_s=med["unigrad"]["tokens_per_s"] / med["trl"]["tokens_per_s"],
                ratio_peak_rss=med["unigrad"]["peak_rss_mb"] / med["trl"]["peak_rss_mb"])
    report["finished"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    report["comparisons_wall_s"] = time.perf_counter() - wall
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
        delta = "n/a (own samples)" if method == "grpo" else f"{abs(u['first_loss'] - t['first_loss']):.1e}"
        print(f"| {method} | {u['tokens_per_s']:.1f} | {t['tokens_per_s']:.1f} | {m['ratio_tokens_per_s']:.2f}× | "
              f"{u['peak_rss_mb']:.0f} | {t['peak_rss_mb']:.0f} | {m['ratio_peak_rss']:.2f}× | {u['first_loss']:.6f} | "
              f"{t['first_loss']:.6f} | {delta} |")
    if "grpo" in report["methods"]:
        m = report["methods"]["grpo"]
        print("\nGRPO step, medians over runs of the per-step means (steps 2..N), seconds:\n")
        print("| framework | s/step | generation | rest of rollout (decode, reward, adv.) | training | before rollout | "
              "generation share | completion tokens/step |")
        print("|---|---|---|---|---|---|---|---|")
        for fw in ("unigrad", "trl"):
            med, ph = m["median"][fw], m["median"][fw]["phases"]
            print(f"| {fw} | {med['step_s']:.2f} | {ph['generation_s']:.2f} | {ph['rollout_other_s']:.2f} | "
                  f"{ph['train_s']:.2f} | {ph['pre_s']:.2f} | {ph['generation_share']:.0%} | "
                  f"{ph['completion_tokens_per_step']:.0f} |")
        r = m["replay"]
        print("\nGRPO replay check (TRL's first step on unigrad's step-1 completions, untimed):\n")
        print("| | unigrad | TRL | abs. difference |\n|---|---|---|---|")
        print(f"| first-step loss | {r['unigrad_loss']:.8f} | {r['trl_loss']:.8f} | {r['loss_abs_diff']:.1e} |")
        print(f"| grad norm (pre-clip) | {r['unigrad_grad_norm']:.8f} | {r['trl_grad_norm']:.8f} | "
              f"{r['grad_norm_abs_diff']:.1e} (rel. {r['grad_norm_rel_diff']:.1e}) |")
        print(f"\nrewards identical: {r['rewards_equal']}; prompts with non-equal rewards: {r['informative_groups']} of "
              f"{r['groups']}; agree to 1e-4: {r['agree_1e-4']}")
    print(f"\nwrote {args.out}")
    if args.no_markdown or Path(args.out).resolve() != (ROOT / "benchmarks/results/trl_compare.json").resolve():
        return
    # the same run: the matmul peak and MFU, a profile of unigrad's step, then RESULTS.md from all of it
    for script in (["benchmarks/mfu.py"], ["benchmarks/bench_profile.py", "sft"]):
        proc = subprocess.run([str(UNIGRAD_PY), *script], cwd=ROOT, capture_output=True, text=True)
        (WORK / f"{Path(script[0]).stem}.log").write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
        if proc.returncode:
            raise RuntimeError(f"{' '.join(script)} failed; see {WORK / Path(script[0]).stem}.log")
    import results_md
    results_md.main()


if __name__ == "__main__":
    main()
