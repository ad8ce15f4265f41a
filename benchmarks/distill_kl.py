"""Distillation must-show: the student's KL to the teacher falls under each KD method, on shipped data.

Teacher: a tiny model first fine-tuned (SFT) on the shipped SFT data, so its token distributions are far
from a random student's. Student: another tiny random model. Each KD method trains the student through
the main loop (`unigrad.train.train`) on the shipped SFT prompts/completions; the metric is the
token-mean forward KL(p_T ‖ p_S) over the full vocabulary on the shipped SFT eval set, before and after.

    python benchmarks/distill_kl.py [--steps 15] [--out benchmarks/results/distill_kl.json]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from unigrad.config import load_config
from unigrad.data import load_dataset_sequences
from unigrad.logprobs import teacher_topk
from unigrad.models import load_model
from unigrad.data.packing import collate
from unigrad.train import train

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "src" / "unigrad" / "resources" / "data" / "sft"
METHODS = ["kd-forward", "kd-reverse", "kd-js", "bd-kd", "sinkd", "pld"]


def forward_kl(student, teacher, sequences, pad_id) -> float:
    """Token-mean KL(p_T ‖ p_S) over completion tokens, full vocabulary."""
    total, count = 0.0, 0.0
    for start in range(0, len(sequences), 16):
        tb = collate(sequences[start:start + 16], pad_id)
        log_t, _ = teacher_topk(teacher, tb, None)
        log_s, _ = teacher_topk(student, tb, None)
        mask = tb.completion_mask
        kl = (log_t.exp() * (log_t - log_s)).sum(-1)
        total += float((kl * mask).sum())
        count += float(mask.sum())
    return total / count


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--work", default="runs/distill-kl")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "distill_kl.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    work = Path(args.work)
    common = ["model.name=tiny-random", f"data.train={DATA / 'train.jsonl'}", "data.format=sft", "data.eval=null",
              "train.batch_size=8", "train.lr=3.0e-3", "train.tensorboard=false", "train.save_every=0"]
    teacher_dir = work / "teacher"
    train(load_config(None, [*common, "model.name=tiny-random:1", "method.name=sft", "train.steps=60",
                             f"output_dir={teacher_dir}"], text="{}"), progress=False)
    teacher, tokenizer = load_model(str(teacher_dir / "final"))
    student, _ = load_model("tiny-random")
    held_out = load_dataset_sequences(str(DATA / "eval.jsonl"), "sft", tokenizer, 256, truncation=True)
    before = forward_kl(student, teacher, held_out, tokenizer.pad_token_id)
    results = {"before": before, "steps": args.steps, "after": {}}
    for name in METHODS:
        k = "null" if name == "sinkd" else "32"
        out = work / name
        train(load_config(None, [*common, f"method.name={name}", f"train.steps={args.steps}", f"output_dir={out}",
                                 f"teacher.name={teacher_dir / 'final'}", f"teacher.k={k}"], text="{}"), progress=False)
        trained, _ = load_model(str(out / "final"))
        results["after"][name] = forward_kl(trained, teacher, held_out, tokenizer.pad_token_id)
        print(f"{name:11s} KL(teacher‖student) on held-out: {before:.4f} -> {results['after'][name]:.4f}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
