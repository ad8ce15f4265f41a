"""Peak memory per process, replicated against sharded (FSDP2, DeepSpeed ZeRO-1/2/3), and that they
all train the same model.

    python benchmarks/sharded_memory.py [--nproc 2] [--steps 2] [--malloc-mmap-threshold 131072]

Runs the same DPO job (configs/dpo-smollm2.yaml: SmolLM2-135M-Instruct, float32, this repository's
pairs) with ``unigrad train --nproc P`` once per layout (replicated, ``train.fsdp=true``,
``train.deepspeed=1|2|3``), each from a fresh parent process, and reports the largest resident set of
any of its processes (the parent's ``RUSAGE_CHILDREN`` peak: the biggest single descendant) and the
largest weight difference between each final model and the replicated one. Writes
benchmarks/results/sharded_memory[_mmapN].json.

Resident memory is what the OS sees, not what tensors hold: glibc keeps freed heap blocks, and FSDP
allocates and frees every layer's gathered weights and gradients on each step, so with the default
allocator its RSS stays near the replicated one. ``--malloc-mmap-threshold 131072`` (glibc's
MALLOC_MMAP_THRESHOLD_ for the children) serves blocks over 128 kB from mmap, returned on free,
so the RSS follows the live tensors.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

LAYOUTS = {"replicated": [], "fsdp": ["train.fsdp=true"], "zero1": ["train.deepspeed=1"],
           "zero2": ["train.deepspeed=2"], "zero3": ["train.deepspeed=3"]}

# A child Python that runs the command and prints the peak RSS (kB on Linux) of its biggest descendant.
PEAK = ("import resource, subprocess, sys; code = subprocess.call(sys.argv[1:]); "
        "print('PEAK_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)")


def run(layout: list[str], out: Path, nproc: int, steps: int, env: dict) -> dict:
    command = [sys.executable, "-c", PEAK, sys.executable, "-m", "unigrad", "train", str(ROOT / "configs" / "dpo-smollm2.yaml"),
               f"train.steps={steps}", "train.save_every=0", "train.eval_every=0", "data.eval=null",
               "train.tensorboard=false", f"output_dir={out}", "--no-progress", "--nproc", str(nproc), *layout]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env)
    if result.returncode != 0:
        raise SystemExit(result.stderr[-3000:])
    peak_kb = int(next(line.split()[1] for line in result.stdout.splitlines() if line.startswith("PEAK_KB")))
    return {"peak_rss_mb": peak_kb / 1024, "seconds": time.perf_counter() - started}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--malloc-mmap-threshold", type=int, default=None,
                    help="glibc MALLOC_MMAP_THRESHOLD_ for the training processes (bytes)")
    args = ap.parse_args()
    env = dict(os.environ)
    env.pop("MALLOC_MMAP_THRESHOLD_", None)
    if args.malloc_mmap_threshold:
        env["MALLOC_MMAP_THRESHOLD_"] = str(args.malloc_mmap_threshold)
    from safetensors.torch import load_file
    with tempfile.TemporaryDirectory(prefix="sharded_memory_") as work:
        results = {}
        for name, layout in LAYOUTS.items():
            results[name] = run(layout, Path(work) / name, args.nproc, args.steps, env)
            final = load_file(str(Path(work) / name / "final" / "model.safetensors"))
            if name == "replicated":
                reference = final
            results[name]["ratio"] = results[name]["peak_rss_mb"] / results["replicated"]["peak_rss_mb"]
            results[name]["max_weight_difference"] = max(float((final[k] - reference[k]).abs().max()) for k in final)
            print(f"{name:>10}: peak RSS of the biggest process {results[name]['peak_rss_mb']:.0f} MB, "
                  f"{results[name]['ratio']:.2f}× replicated, weights within "
                  f"{results[name]['max_weight_difference']:.1e} ({results[name]['seconds']:.0f}s)", flush=True)
    option = f" --malloc-mmap-threshold {args.malloc_mmap_threshold}" if args.malloc_mmap_threshold else ""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    record = {"date": time.strftime("%Y-%m-%d"), "commit": commit, "nproc": args.nproc, "steps": args.steps,
              "malloc_mmap_threshold": args.malloc_mmap_threshold, "layouts": results,
              "command": f"python benchmarks/sharded_memory.py --nproc {args.nproc} --steps {args.steps}{option}"}
    suffix = f"_mmap{args.malloc_mmap_threshold}" if args.malloc_mmap_threshold else ""
    (HERE / "results" / f"sharded_memory{suffix}.json").write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
