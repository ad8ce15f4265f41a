"""The command line: ``unigrad train CONFIG [key=value ...]``, ``unigrad methods``.

Errors a user can fix (config, data, model, a diverging run, a refused resume) print one paragraph
and exit 2; ``--debug`` shows the traceback instead. A run stopped by SIGTERM or SIGINT writes a
checkpoint and exits with 128 + the signal's number (143, 130); ``--resume`` continues it.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from importlib import resources

from unigrad.config import ConfigError, load_config
from unigrad.data import DataError
from unigrad.guards import Preempted, RunError
from unigrad.methods.compose import MethodSpecError
from unigrad.models import ModelError
from unigrad.versions import DependencyError, check

USER_ERRORS = (ConfigError, DataError, ModelError, MethodSpecError, RunError, DependencyError, FileNotFoundError)
QUICK_START = "quickstart.yaml"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unigrad", description="Post-training as one gradient estimator with four parts.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train with a config (no config: the bundled quick start)")
    train.add_argument("config", nargs="?", help="YAML config; key=value arguments override it")
    train.add_argument("overrides", nargs="*", help="overrides such as train.steps=20 method.beta=0.2")
    train.add_argument("--resume", action="store_true", help="continue from the last checkpoint in output_dir")
    train.add_argument("--force", action="store_true",
                       help="with --resume: continue even where the config or data changed since the checkpoint")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument("--nproc", type=int, default=1, help="data-parallel processes on this machine")
    train.add_argument("--debug", action="store_true", help="show tracebacks")
    commands.add_parser("methods", help="list every method with its four parts")
    _add_eval_parser(commands)
    report = commands.add_parser("report", help="plots and an index.html of a training run's metrics; several runs overlaid")
    report.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="a run's output_dir (holding metrics.jsonl)")
    report.add_argument("--out", help="where to write (default: RUN_DIR/report; several runs: the first's parent/report-compare)")
    report.add_argument("--labels", nargs="+", help="with several runs: a name for each, in order (default: folder names)")
    report.add_argument("--debug", action="store_true", help="show tracebacks")
    _add_repro_parser(commands)
    from unigrad.diagnostics import add_diagnose_command
    from unigrad.merge import add_merge_command
    add_merge_command(commands)        # `unigrad merge`, `unigrad diagnose`: each sets its own handler
    add_diagnose_command(commands)
    return parser


def _relaunch(args, argv: list[str]) -> int:
    """``unigrad train --nproc P ...``: P processes of ``unigrad train ...`` on this machine, with the
    environment torchrun would give them (RANK, LOCAL_RANK, WORLD_SIZE, a free local rendezvous port).
    Returns the processes' exit code (a user error: 2, stopped by a signal: 128 + its number); when one
    fails, the others are stopped after a grace period instead of waiting in a collective forever."""
    import socket
    import subprocess
    import time
    with socket.socket() as probe:  # a free local port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    rest, skip = [], False
    for item in argv:
        if skip:
            skip = False
            continue
        if item == "--nproc":
            skip = True
            continue
        if not item.startswith("--nproc="):
            rest.append(item)
    base = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "WORLD_SIZE": str(args.nproc),
            "LOCAL_WORLD_SIZE": str(args.nproc), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    children = [subprocess.Popen([sys.executable, "-m", "unigrad", *rest],
                                 env={**base, "RANK": str(rank), "LOCAL_RANK": str(rank)}) for rank in range(args.nproc)]
    received = []

    def forward(signum, frame):   # the processes checkpoint and stop; this one waits for them
        received.append(signum)
        for child in children:
            child.send_signal(signum)
    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        failed_at = None
        while any(child.poll() is None for child in children):
            if failed_at is None and any(child.poll() not in (None, 0) for child in children):
                failed_at = time.monotonic()
            if failed_at is not None and time.monotonic() - failed_at > 10:
                for child in children:
                    if child.poll() is None:
                        child.kill()
            time.sleep(0.05)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    codes = [child.returncode for child in children]
    if received:
        return 128 + received[0]
    return next((code for code in codes if code > 0), next((1 for code in codes if code), 0))


def _train(args) -> int:
    from unigrad.train import train
    config_path, overrides = args.config, list(args.overrides)
    if config_path and "=" in config_path:       # `unigrad train key=value` with the quick start
        config_path, overrides = None, [config_path, *overrides]
    text = None
    if config_path is None:
        text = resources.files("unigrad").joinpath("resources", QUICK_START).read_text()
        print(f"unigrad: no config given, running the bundled quick start ({QUICK_START})", file=sys.stderr)
    config = load_config(config_path, overrides, text=text)
    summary = train(config, resume=args.resume, progress=not args.no_progress, force=args.force)
    if os.environ.get("RANK", "0") != "0":
        return 0
    for key in ("eval/accuracy", "eval/reward_margin", "eval/objective"):
        if key in summary and f"before/{key}" in summary:
            print(f"held-out {key.split('/')[1]}: {summary[f'before/{key}']:.4g} before -> {summary[key]:.4g} after")
            break
    shown = {k: v for k, v in summary.items() if k == "objective" or k in ("eval/accuracy", "eval/reward_mean",
                                                                             "eval/reward_margin", "eval/objective")}
    print("done: " + ", ".join(f"{k}={v:.4g}" for k, v in shown.items() if isinstance(v, float)))
    print(f"model saved to {summary['final_model']}")
    if "report" in summary:
        print(f"report: {summary['report']}")
    return 0


def _methods(_args) -> int:
    from unigrad.methods import REGISTRY, describe, signature
    for name in sorted(REGISTRY):
        print(f"{name}({signature(name)})")
        print(describe(REGISTRY[name]()))
        print()
    return 0


def _add_eval_parser(commands) -> None:
    ev = commands.add_parser("eval", help="accuracy, mean reward, pass@k and best-of-n of a model on prompts; "
                                          "pair accuracy of a reward model on preference pairs")
    ev.add_argument("--model", default="smollm2-135m-instruct",
                    help="smollm2-135m-instruct (default), tiny-random, a model folder (e.g. runs/x/final) or a Hub id; "
                         "a reward model (a reward-model run's folder or its final/) is scored on pairs (--data, "
                         "default: the run's data.eval)")
    source = ev.add_mutually_exclusive_group()
    source.add_argument("--data", help="a prompts file (prompt, answer): JSONL, JSON, Parquet or a datasets folder; "
                                       "for a reward model, a pairs file (prompt, chosen, rejected)")
    source.add_argument("--task", choices=["arithmetic"], help="a built-in task's test split (the default: arithmetic)")
    ev.add_argument("--difficulty", type=int, default=2, help="arithmetic level 1-5 (default 2)")
    ev.add_argument("--num-test", type=int, default=50,
                    help="arithmetic test-split size: make_splits(n_train, NUM_TEST, seed=0)[1] (default 50)")
    ev.add_argument("--reward", default="numeric_match",
                    help="numeric_match (default), math_verify_match, format_reward, module:function or file.py:function")
    ev.add_argument("--select", help="reward that picks the best of the samples (a reward spec, or a reward-model "
                                     "folder); default: --reward itself (then best-of-n accuracy = pass@n)")
    ev.add_argument("--k", type=int, nargs="+", help="pass@k for these k (sampling --samples per prompt); "
                                                     "without --k and --samples only greedy decoding runs")
    ev.add_argument("--samples", type=int, help="samples per prompt for pass@k / best-of-n (default: the largest k; "
                                                   "without --k: pass@1 and pass@SAMPLES)")
    ev.add_argument("--limit", type=int, help="evaluate only the first N prompts")
    ev.add_argument("--max-new-tokens", type=int, help="default 48 for the arithmetic task, 256 for --data")
    ev.add_argument("--temperature", type=float, default=1.0, help="sampling temperature for pass@k (default 1.0)")
    ev.add_argument("--top-p", type=float, default=1.0)
    ev.add_argument("--batch-size", type=int, default=16, help="rows (prompts x samples) decoded together")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--out", help="write the full result (metrics and every completion) to this JSON file")
    ev.add_argument("--no-progress", action="store_true", help="no progress bar")
    ev.add_argument("--debug", action="store_true", help="show tracebacks")


def _eval(args) -> int:
    import json
    import os

    import torch

    from unigrad.evaluate import evaluate_prompts, format_table
    from unigrad.models import load_model
    from unigrad.rewards import RewardModel, load_reward
    for name in ("limit", "samples", "max_new_tokens", "num_test", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < (0 if name == "samples" else 1):
            raise ConfigError(f"--{name.replace('_', '-')} must be >= {0 if name == 'samples' else 1}, got {value}")
    reward_model = _reward_model_folder(args.model)
    if reward_model:
        return _eval_pairs(args, *reward_model)
    try:
        reward = load_reward(args.reward)
        select = None
        if args.select:
            select = RewardModel(args.select) if os.path.isdir(os.path.expanduser(args.select)) else load_reward(args.select)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    if args.data:
        from unigrad.data.prompts import load_prompts
        examples, where = load_prompts(args.data, limit=args.limit), args.data
        max_new = args.max_new_tokens or 256
    else:
        from unigrad.tasks.arithmetic import make_splits
        try:
            examples = make_splits(0, args.num_test, seed=0, difficulty=args.difficulty)[1]
        except ValueError as e:
            raise ConfigError(f"--difficulty/--num-test: {e}") from e
        examples = examples[:args.limit] if args.limit else examples
        where = f"arithmetic test split (difficulty {args.difficulty}, seed 0)"
        max_new = args.max_new_tokens or 48
    num_samples = args.samples if args.samples is not None else (max(args.k) if args.k else 0)
    if args.k and any(k < 1 for k in args.k):
        raise ConfigError(f"--k must be >= 1, got {args.k}")
    if args.k and max(args.k) > num_samples:
        raise ConfigError(f"--k {max(args.k)} needs --samples >= {max(args.k)}, got {num_samples}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, tokenizer = load_model(args.model, device=device)
    print(f"unigrad eval: {args.model} on {where}, {len(examples)} prompts, reward {args.reward}", file=sys.stderr)
    ks = args.k or ([1, num_samples] if num_samples else [])
    result = evaluate_prompts(model, tokenizer, examples, reward, k=ks, num_samples=num_samples,
                              temperature=args.temperature, top_p=args.top_p, max_new_tokens=max_new,
                              batch_size=args.batch_size, seed=args.seed, select_reward=select,
                              progress=not args.no_progress)
    result = {"model": args.model, "data": where, "reward": args.reward, "select": args.select, **result}
    print(format_table(result))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1, ensure_ascii=False)
        print(f"written to {args.out}")
    return 0


def _reward_model_folder(model: str):
    """(reward-model folder, its run's config dict or None) when ``model`` is a reward model: a
    sequence-classification folder, or a run folder whose final/ is one; else None."""
    import json
    from pathlib import Path

    from unigrad.models import is_score_folder
    path = Path(os.path.expanduser(model))
    if not path.is_dir():
        return None
    if is_score_folder(path):
        run = path.parent / "config.json" if path.name == "final" else None
    elif is_score_folder(path / "final"):
        path, run = path / "final", path / "config.json"
    else:
        return None
    return str(path), (json.loads(run.read_text()) if run is not None and run.is_file() else None)


def _eval_pairs(args, folder: str, run: dict | None) -> int:
    """``unigrad eval`` of a reward model: held-out pair accuracy and mean margin on a pairs file."""
    import json

    import torch

    from unigrad.data.sources import resolve_data_path
    from unigrad.evaluate import evaluate_pairs, format_pairs_table
    from unigrad.rewards import RewardModel
    if args.task:
        raise ConfigError(f"--task: {args.model} is a reward model, scored on preference pairs (--data), not on a task's prompts")
    data = (run or {}).get("data", {})
    path = args.data or data.get("eval")
    if not path:
        raise ConfigError(f"--data: {args.model} is a reward model; give the preference pairs to score it on "
                          f"(a pairs file: prompt, chosen, rejected)")
    path = resolve_data_path(path, None)
    reward_model = RewardModel(folder, batch_size=args.batch_size, device="cuda" if torch.cuda.is_available() else "cpu")
    print(f"unigrad eval: reward model {folder} on pairs {path}", file=sys.stderr)
    result = evaluate_pairs(reward_model, path, max_length=int(data.get("max_length", 512)),
                            truncation=bool(data.get("truncation", False)), limit=args.limit)
    result = {"model": folder, "data": path, **result}
    print(format_pairs_table(result))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
        print(f"written to {args.out}")
    return 0


def _add_repro_parser(commands) -> None:
    repro = commands.add_parser("repro", help="reproduce the papers' claims at laptop scale, beside the papers' numbers")
    repro.add_argument("names", nargs="*", help="reproductions to run (all: every one; see --list)")
    repro.add_argument("--list", action="store_true", help="every reproduction, its claim and its last verdict")
    repro.add_argument("--quick", action="store_true", help="one seed, fewer steps: each in at most 10 minutes on 2 CPU cores")
    repro.add_argument("--tiny", action="store_true", help="a tiny random model, seconds: checks that it runs (numbers meaningless)")
    repro.add_argument("--seeds", type=int, help="number of seeds (default: 1 with --quick/--tiny, else each one's full setting)")
    repro.add_argument("--out", default="runs/repro", help="where results go (default runs/repro)")
    repro.add_argument("--page", metavar="PATH", help="write the results page (docs/REPRODUCTIONS.md) from the last full runs in --out")
    repro.add_argument("--no-progress", action="store_true", help="no progress bars")
    repro.add_argument("--debug", action="store_true", help="show tracebacks")


def _repro(args) -> int:
    from unigrad import repro
    from unigrad.repro.runner import listing, results_page, run_one, write_index
    if args.list:
        print(listing(args.out))
        return 0
    if not args.names and not args.page:
        raise ConfigError("unigrad repro: name the reproductions to run (or all); --list shows them")
    chosen = repro.names() if args.names == ["all"] else args.names
    for name in chosen:
        repro.get(name) if name in repro.REGISTRY else _unknown_reproduction(name)
    scale = repro.Scale(quick=args.quick, tiny=args.tiny, seeds=args.seeds, progress=not args.no_progress)
    for name in chosen:
        result = run_one(repro.get(name), args.out, scale)
        print(f"{name}: {result['verdict']} — {result['ours']} ({result['wall_seconds']:.0f} s)\n"
              f"    {args.out}/{name}/index.html")
    if chosen:
        print(f"index: {write_index(args.out)}")
    if args.page:
        print(f"results page: {results_page(args.out, args.page)}")
    return 0


def _unknown_reproduction(name: str):
    from unigrad.repro import names
    raise ConfigError(f"unigrad repro: unknown reproduction {name!r}; known: {', '.join(names())} (or all)")


def _report(args) -> int:
    """One run: its report (in RUN_DIR/report or --out); several: one page overlaying them."""
    from pathlib import Path
    from unigrad.report import write_comparison, write_report
    if len(args.run_dirs) == 1:
        if args.labels:
            raise ConfigError("unigrad report: --labels names the runs of a comparison; give two or more RUN_DIRs")
        print(write_report(args.run_dirs[0], args.out))
        return 0
    out = args.out or Path(args.run_dirs[0]).resolve().parent / "report-compare"
    print(write_comparison(args.run_dirs, out, args.labels))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    bad = [item for item in extra if "=" not in item or item.startswith("-")]
    if bad or (extra and args.command != "train"):
        parser.error(f"unrecognized arguments: {' '.join(bad or extra)}")
    if extra:  # key=value overrides given after an option
        args.overrides = [*args.overrides, *extra]
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()   # per-save "Writing model shards" bars drown the training bar
    from unigrad.parallel.zero import quiet_accelerator_notice
    quiet_accelerator_notice()
    if args.command == "train" and args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return _relaunch(args, list(sys.argv[1:] if argv is None else argv))
    handler = {"train": _train, "methods": _methods, "eval": _eval, "report": _report, "repro": _repro}.get(args.command) or args.handler
    try:
        check()     # an installed dependency older than unigrad needs: say which, before it fails obscurely
        return handler(args)
    except Preempted as stop:
        print(f"unigrad: {stop}", file=sys.stderr)
        return stop.exit_code
    except USER_ERRORS as error:
        if args.debug:
            raise
        rank = os.environ.get("RANK", "0")
        print(f"unigrad: {'' if rank == '0' else f'process {rank}: '}error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("unigrad: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 — a bug of ours: say so, briefly
        if args.debug:
            raise
        print(f"unigrad: internal error: {type(error).__name__}: {error} (run with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
