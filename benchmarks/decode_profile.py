"""Where the GRPO step's generation time goes: torch.profiler over one ``HFSampler.sample`` call on the
embedded SmolLM2-135M-Instruct (float32, CPU) — 4 arithmetic prompts × 4 samples, up to 64 new tokens,
temperature 1, the benchmark's sampling settings.

    python benchmarks/decode_profile.py

Prints the wall time, the completion tokens and the top operators by self CPU time.
"""
import time

import torch
from torch.profiler import ProfilerActivity, profile

from unigrad.models import load_model
from unigrad.rollout.hf import HFSampler

QUESTIONS = [(12, 7), (33, 48), (5, 91), (250, 17)]


def main() -> None:
    model, tokenizer = load_model("smollm2-135m-instruct")
    sampler = HFSampler(model, tokenizer)
    prompts = [list(tokenizer.apply_chat_template([{"role": "user", "content": f"What is {a} + {b}? Answer with the number."}],
                                                  add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"])
               for a, b in QUESTIONS]
    sampler.sample(prompts, 4, 8, seed=0)                    # warm-up
    started = time.perf_counter()
    rollouts = sampler.sample(prompts, 4, 64, seed=1)
    print(f"{time.perf_counter() - started:.2f} s for {int(rollouts.mask.sum())} completion tokens "
          f"({rollouts.mask.shape[1]} decode steps, {rollouts.mask.shape[0]} rows)")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        sampler.sample(prompts, 4, 64, seed=1)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
