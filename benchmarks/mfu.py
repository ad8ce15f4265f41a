"""Model-FLOPs utilisation of unigrad's training step on this CPU.

    .venv/bin/python benchmarks/mfu.py [--results benchmarks/results/trl_compare.json]

Peak: best of several float32 torch.matmul of 2048×2048 (2·n³ FLOPs each), all torch threads.
Model FLOPs per token for a training step: 6·N (forward 2·N, backward 4·N), attention's
sequence-length term left out (sequences here are < 256 tokens, so it is < 2% of 6·N). Reported
for N = all parameters (tied embedding counted once; it *is* a matmul, the LM head) and for
N = non-embedding parameters. tokens/s: each framework's median steady-state tokens/s from run.py
(GRPO: the step's tokens over the training phase of the step, generation excluded).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def matmul_peak_gflops(n: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - started)
    return 2 * n ** 3 / best / 1e9


def main() -> None:
    root = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser()
    parser.add_argument("--results", default=str(root / "benchmarks/results/trl_compare.json"))
    args = parser.parse_args()
    from transformers import AutoModelForCausalLM
    from unigrad.models import embedded_model_folder
    folder = embedded_model_folder()
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    n_all = sum(p.numel() for p in model.parameters())          # parameters() yields a tied weight once
    n_embed = model.get_input_embeddings().weight.numel()
    n_non_embed = n_all - n_embed
    del model
    peak = matmul_peak_gflops()
    out = {"threads": torch.get_num_threads(), "matmul_2048_fp32_peak_gflops": peak,
           "params_all": n_all, "params_non_embedding": n_non_embed, "methods": {}}
    print(f"threads {out['threads']}  fp32 matmul 2048² peak {peak:.1f} GFLOP/s")
    print(f"N all = {n_all / 1e6:.1f} M, N non-embedding = {n_non_embed / 1e6:.1f} M")
    results = json.loads(Path(args.results).read_text())
    for method, m in results["methods"].items():
        for fw in ("unigrad", "trl"):
            med = m["median"][fw]
            # GRPO: the training phase only (generation is forward-only decoding, not 6·N per token)
            tps = (med["phases"]["tokens_per_step"] / med["phases"]["train_s"]) if "phases" in med else med["tokens_per_s"]
            mfu_all = 6 * n_all * tps / (peak * 1e9)
            mfu_ne = 6 * n_non_embed * tps / (peak * 1e9)
            out["methods"].setdefault(method, {})[fw] = {"tokens_per_s": tps, "mfu_all_params": mfu_all,
                                                         "mfu_non_embedding": mfu_ne}
            print(f"{method:4s} {fw:8s} {tps:7.1f} tok/s  MFU(6·N_all) {100 * mfu_all:5.1f}%  "
                  f"MFU(6·N_non-emb) {100 * mfu_ne:5.1f}%")
    path = root / "benchmarks/results/mfu.json"
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
