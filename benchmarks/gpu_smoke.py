"""GPU smoke run: one tiny config per method family, two optimiser steps each, finite losses required.

    python benchmarks/gpu_smoke.py                                  # CUDA GPU, bfloat16 (the default)
    python benchmarks/gpu_smoke.py --device cpu --dtype float32     # the same runs on the CPU
    python benchmarks/gpu_smoke.py --only hpt a-lol                 # some families only

Each run is the tiny random model (``model: tiny-random``) for 2 steps of batch 2, configured with
``unigrad.config.load_config`` and trained by ``unigrad.train.train`` (what ``unigrad train`` calls),
with the model in ``--dtype``. Families: sft, dpo, grpo (online, arithmetic task), hpt (SFT/RL gate on
``is_demo``), npo (unlearning), a-lol (scored data with a ``value`` field per row) and kd-forward (a tiny
random teacher, top-16). HPT's ``is_demo`` and A-LoL's ``value`` are step-level fields that must reach
the model's device, which a CPU run cannot show. A run fails if it raises or if a logged step's
objective, surrogate or gradient norm is not finite. Prints one line per family; exit status 1 if any
failed. Nothing is timed.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import traceback
from pathlib import Path

FAMILIES = {
    "sft": """
method: {name: sft}
data: {train: data/sft/train.jsonl, format: sft, max_length: 256}
""",
    "dpo": """
method: {name: dpo, beta: 0.1}
data: {train: data/pairs/train.jsonl, format: pairs, max_length: 256}
""",
    "grpo": """
method: {name: grpo}
data: {format: prompts, task: {name: arithmetic, train_size: 16, eval_size: 2}, max_length: 96}
rollout: {num_generations: 4, max_new_tokens: 8}
reward: {function: numeric_match}
""",
    "hpt": """
method: {name: hpt, gamma: 0.0}
data: {format: prompts, task: {name: arithmetic, train_size: 16, eval_size: 2}, max_length: 96}
rollout: {num_generations: 4, max_new_tokens: 8}
reward: {function: numeric_match}
""",
    "npo": """
method: {name: npo, beta: 0.1, retain_weight: 1.0}
data: {train: data/forget/train.jsonl, format: forget, max_length: 256}
""",
    "a-lol": """
method: {name: a-lol}
data: {train: SCORED_WITH_VALUE, format: scored, max_length: 256}
""",
    "kd": """
teacher: {name: "tiny-random:1", k: 16}
method: {name: kd-forward}
data: {train: data/sft/train.jsonl, format: sft, max_length: 256}
""",
}
COMMON = ["train.steps=2", "train.batch_size=2", "train.log_every=1", "train.eval_every=0", "train.save_every=0",
          "train.tensorboard=false", "data.eval=null"]
CHECKED = ("objective", "surrogate", "grad_norm")


def scored_with_value(folder: Path) -> str:
    """The shipped scored data with a ``value`` field on every record (A-LoL reads it as V(x))."""
    from importlib import resources
    shipped = Path(str(resources.files("unigrad").joinpath("resources"))) / "data" / "scored" / "train.jsonl"
    path = folder / "scored_with_value.jsonl"
    with shipped.open() as source, path.open("w") as out:
        for k, line in enumerate(source):
            if line.strip():
                out.write(json.dumps({**json.loads(line), "value": 0.1 * (k % 5)}) + "\n")
    return str(path)


def run_family(name: str, dtype: str, folder: Path) -> tuple[bool, str]:
    from unigrad.config import load_config
    from unigrad.train import train

    text = "model: tiny-random\n" + FAMILIES[name].replace("SCORED_WITH_VALUE", scored_with_value(folder))
    out_dir = folder / name
    overrides = [*COMMON, f"model.dtype={dtype}", f"output_dir={out_dir}"]
    if name in ("grpo", "hpt"):
        overrides.remove("data.eval=null")          # prompts: the held-out split comes from the task
    train(load_config(None, overrides, text=text), progress=False)
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [row for row in rows if row.get("step", 0) > 0]
    if len(steps) != 2:
        return False, f"{len(steps)} logged steps, expected 2"
    bad = [f"step {row['step']} {key}={row[key]}" for row in steps for key in CHECKED
           if key in row and not math.isfinite(float(row[key]))]
    if bad or not all("objective" in row for row in steps):
        return False, "; ".join(bad) or "no objective logged"
    return True, ", ".join(f"step {row['step']}: objective {row['objective']:.4g}" for row in steps)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--dtype", choices=("bfloat16", "float32", "float16"), default="bfloat16")
    parser.add_argument("--only", nargs="+", choices=tuple(FAMILIES), help="run only these families")
    args = parser.parse_args(argv)
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""      # before torch is imported: the runs see no GPU
    import torch
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_smoke: no CUDA GPU (use --device cpu --dtype float32 to check the script on the CPU)")
        return 2
    where = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    print(f"gpu_smoke on {where}, model.dtype={args.dtype}, torch {torch.__version__}")
    failed = []
    with tempfile.TemporaryDirectory(prefix="unigrad-smoke-") as tmp:
        for name in args.only or FAMILIES:
            try:
                ok, detail = run_family(name, args.dtype, Path(tmp))
            except Exception as error:  # noqa: BLE001 - every family runs; the failure is reported
                ok, detail = False, f"{type(error).__name__}: {error}\n{traceback.format_exc(limit=6)}"
            print(f"{'ok  ' if ok else 'FAIL'} {name:6s} {detail}", flush=True)
            if not ok:
                failed.append(name)
    names = ", ".join(failed)
    print(f"gpu_smoke: {len(failed)} of {len(args.only or FAMILIES)} families failed" + (f": {names}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
