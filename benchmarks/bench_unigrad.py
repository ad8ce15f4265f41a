"""One unigrad repetition (one process): SFT or DPO on SmolLM2-135M-Instruct, fp32, CPU.

Run by benchmarks/run.py with the project venv:  .venv/bin/python benchmarks/bench_unigrad.py METHOD STEPS BATCH OUT_DIR
Prints one JSON line (prefix BENCH_RESULT) with the times of every optimiser step (from a global
optimiser post-step hook, so a step's time is end-of-step to end-of-step, logging included), the
per-step objectives from metrics.jsonl and the peak RSS.
"""
from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

import torch

STEP_ENDS: list[float] = []
RSS_AT_STEP: list[int] = []


def _hook(optimizer, args, kwargs):
    STEP_ENDS.append(time.perf_counter())
    RSS_AT_STEP.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def install_step_hook() -> None:
    """Every AdamW created from now on calls _hook after each step()."""
    original = torch.optim.AdamW.__init__
    fused = os.environ.get("UNIGRAD_BENCH_FUSED_ADAMW") == "1"   # what-if: not what unigrad ships

    def init(self, *args, **kwargs):
        if fused:
            kwargs["fused"] = True
        original(self, *args, **kwargs)
        self.register_step_post_hook(_hook)
    torch.optim.AdamW.__init__ = init


def main() -> None:
    method, steps, batch, out_dir = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    from unigrad.config import load_config
    from unigrad.train import train

    data = Path(__file__).resolve().parents[1] / "src/unigrad/resources/data"
    common = [f"train.steps={steps}", f"train.batch_size={batch}", "train.lr=1.0e-5", "train.optimizer=adamw",
              "train.schedule=constant", "train.warmup_steps=0", "train.max_grad_norm=1.0", "train.seed=0",
              "train.eval_every=0", "train.save_every=0", "train.log_every=1", "train.weight_decay=0.0",
              "model.dtype=float32", "data.max_length=256", f"data.limit={steps * batch}", f"output_dir={out_dir}"]
    if method == "sft":
        overrides = ["method.name=sft", f"data.train={data}/sft/train.jsonl", "data.format=sft"]
    else:
        overrides = ["method.name=dpo", "method.beta=0.1", f"data.train={data}/pairs/train.jsonl", "data.format=pairs",
                     "reference.precompute=true"]
    text = "model: smollm2-135m-instruct\nmethod: {name: sft}\ndata: {train: x, eval: null}\n"
    config = load_config(None, common + overrides, text=text)
    install_step_hook()
    started = time.perf_counter()
    train(config, progress=False)
    total = time.perf_counter() - started
    records = [json.loads(line) for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines() if line]
    objectives = {r["step"]: r["objective"] for r in records if "objective" in r and r["step"] > 0}
    print("BENCH_RESULT " + json.dumps({
        "framework": "unigrad", "method": method, "fused_adamw": os.environ.get("UNIGRAD_BENCH_FUSED_ADAMW") == "1", "step_ends": STEP_ENDS,
        "losses": [objectives[s] for s in sorted(objectives)],
        "own_tokens_per_s": [r.get("tokens_per_s") for r in records if r["step"] > 0],
        "peak_rss_kb_end": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "peak_rss_kb_last_step": RSS_AT_STEP[-1] if RSS_AT_STEP else None,
        "threads": torch.get_num_threads(), "wall_s": total,
    }), flush=True)


if __name__ == "__main__":
    main()
