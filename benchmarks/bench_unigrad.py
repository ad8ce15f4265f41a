"""One unigrad repetition (one process): SFT, DPO or GRPO on SmolLM2-135M-Instruct, fp32, CPU.

Run by benchmarks/run.py with the project venv:  .venv/bin/python benchmarks/bench_unigrad.py METHOD STEPS BATCH OUT_DIR
Prints one JSON line (prefix BENCH_RESULT) with the times of every optimiser step (recorded right
after each step's update, so a step's time is end-of-update to end-of-update, logging included), the
per-step objectives from metrics.jsonl and the peak RSS.

METHOD ``sft-noclip`` / ``dpo-noclip``: the memory comparison — no grad-norm clip (TRL likewise), which
lets unigrad update inside backward (``train.optimizer_in_backward``), freeing each gradient at once.

grpo: BATCH prompts per step of the built-in arithmetic task × GRPO_GENERATIONS samples each, loss
DAPO-style (PPO clip 0.2/0.2, π_old = the sampler's log-probs, group-normalised advantage with
TRL's unbiased std + 1e-4, token mean over the step), one epoch per rollout batch. Also reports
per step the generation and rollout (generation + reward) times, the tokens of the step's
sequences and its prompts, and writes OUT_DIR/replay_step1.json (step 1's prompts, sampled
completions and rewards) for run.py's replay check against TRL.
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
GENERATIONS: list[tuple[float, float]] = []   # grpo: (start, end) of each sampler.sample call
ROLLOUTS: list[dict] = []                     # grpo: per step, rollout start/end, tokens, prompts

# grpo settings (run.py exports the same prompts: keep GRPO_TASK in sync with run.py's GRPO_TASK).
# The quick start's level-2 task; 500 training problems (seed 0) because with these step 1 has a prompt
# whose 4 samples do not all get the same reward, so the replay check compares a non-zero loss and gradient
# (with 2000, all 16 step-1 rewards are 0: advantages, loss and gradient are exactly 0 on both sides).
GRPO_TASK = {"name": "arithmetic", "train_size": 500, "eval_size": 0, "difficulty": 2, "seed": 0}
GRPO_GENERATIONS = 4
GRPO_MAX_NEW_TOKENS = 64
GRPO_ADVANTAGE_EPS = 1e-4   # TRL's GRPOTrainer: (R - mean) / (std + 1e-4); unigrad's default is 1e-6


def install_step_hook() -> None:
    """Record the time (and peak RSS) right after every step's update: the one-process layout calls
    ``unigrad.optim.apply_update`` once per step, after backward, for the usual optimiser and for
    ``optimizer_in_backward`` alike (an optimiser post-step hook would fire once per parameter there)."""
    import unigrad.optim
    apply_update = unigrad.optim.apply_update

    def timed(*args, **kwargs):
        out = apply_update(*args, **kwargs)
        STEP_ENDS.append(time.perf_counter())
        RSS_AT_STEP.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
        return out
    unigrad.optim.apply_update = timed


def install_rollout_probes(out_dir: str) -> None:
    """grpo: time every sampler.sample call and every rollout (sampling + rewards + batch building),
    count the step's tokens (prompt + completion of every sequence) and save step 1's rollouts."""
    from unigrad.experience import RolloutSource
    from unigrad.rollout.hf import HFSampler
    sample, experience = HFSampler.sample, RolloutSource.experience

    def timed_sample(self, *args, **kwargs):
        started = time.perf_counter()
        out = sample(self, *args, **kwargs)
        GENERATIONS.append((started, time.perf_counter()))
        return out

    def timed_experience(self, units, step, tokenizer, spare=()):
        started = time.perf_counter()
        exp = experience(self, units, step, tokenizer, spare)
        ended = time.perf_counter()
        seqs = exp.sequences
        ROLLOUTS.append({"start": started, "end": ended, "tokens": sum(s.length for s in seqs),
                         "completion_tokens": sum(len(s.completion_ids) for s in seqs),
                         "prompt_ids": [list(seqs[unit[0]].prompt_ids) for unit in exp.units]})
        if len(ROLLOUTS) == 1:
            replay = {"prompt_ids": [list(s.prompt_ids) for s in seqs], "completion_ids": [list(s.completion_ids) for s in seqs],
                      "group": [s.group for s in seqs], "rewards": exp.fields["reward"].tolist(),
                      "texts": [tokenizer.decode(list(s.completion_ids), skip_special_tokens=True) for s in seqs]}
            (Path(out_dir) / "replay_step1.json").write_text(json.dumps(replay))
        return exp

    HFSampler.sample, RolloutSource.experience = timed_sample, timed_experience


def grpo_config(common: list[str]):
    """unigrad's DAPO loss (ε_low = ε_high = 0.2) from parts, with TRL's advantage eps."""
    import yaml
    tree = {
        "model": "smollm2-135m-instruct",
        "method": {"parts": {"mask": {"name": "ppo_clip", "eps_low": 0.2, "eps_high": 0.2},
                             "denominator": "behaviour",
                             "advantage": {"name": "group_normalised", "eps": GRPO_ADVANTAGE_EPS, "unbiased": True},
                             "likelihood": {"unit": "token", "normaliser": "token_mean"}}},
        "data": {"train": "", "eval": None, "format": "prompts", "task": GRPO_TASK},
        "rollout": {"num_generations": GRPO_GENERATIONS, "max_new_tokens": GRPO_MAX_NEW_TOKENS, "temperature": 1.0,
                    "top_p": 1.0, "top_k": 0, "epochs": 1, "sampler": "hf", "dynamic_sampling": False},
        "reward": {"function": "numeric_match"},
    }
    from unigrad.config import load_config
    return load_config(None, common, text=yaml.safe_dump(tree))


def main() -> None:
    method, steps, batch, out_dir = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    from unigrad.config import load_config
    from unigrad.train import train

    data = Path(__file__).resolve().parents[1] / "src/unigrad/resources/data"
    common = [f"train.steps={steps}", f"train.batch_size={batch}", "train.lr=1.0e-5", "train.optimizer=adamw",
              "train.schedule=constant", "train.warmup_steps=0", "train.max_grad_norm=1.0", "train.seed=0",
              "train.eval_every=0", "train.save_every=0", "train.log_every=1", "train.weight_decay=0.0",
              "model.dtype=float32", "data.max_length=256", f"data.limit={steps * batch}", f"output_dir={out_dir}"]
    if method == "grpo":
        config = grpo_config(common)
        install_rollout_probes(out_dir)
    else:
        no_clip = method.endswith("-noclip")
        if no_clip:
            common += ["train.max_grad_norm=null", "train.optimizer_in_backward=true"]
        if method.removesuffix("-noclip") == "sft":
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
    extra = {}
    if method == "grpo":
        # the loss is the surrogate (the value backpropagated, what TRL logs as "loss"); the canonical
        # objective −(1/N_tok) Σ Â·r̃ differs from it only where the clip cuts a term
        train = sorted((r for r in records if r["step"] > 0 and "surrogate" in r), key=lambda r: r["step"])
        extra = {"objectives": [objectives[s] for s in sorted(objectives)], "grad_norms": [r["grad_norm"] for r in train],
                 "reward_means": [r.get("reward_mean") for r in train],
                 "completion_lengths": [r.get("completion_length") for r in train],
                 "step_tokens": [r["tokens"] for r in ROLLOUTS],
                 "step_completion_tokens": [r["completion_tokens"] for r in ROLLOUTS],
                 "step_prompt_ids": [r["prompt_ids"] for r in ROLLOUTS],
                 "rollout_spans": [[r["start"], r["end"]] for r in ROLLOUTS], "generation_spans": GENERATIONS,
                 "replay_file": str(Path(out_dir) / "replay_step1.json"),
                 "config": {"method": config.method, "rollout": vars(config.rollout), "task": vars(config.data.task)}}
        objectives = {r["step"]: r["surrogate"] for r in train}
    print("BENCH_RESULT " + json.dumps({
        "framework": "unigrad", "method": method, "step_ends": STEP_ENDS,
        "losses": [objectives[s] for s in sorted(objectives)],
        "own_tokens_per_s": [r.get("tokens_per_s") for r in records if r["step"] > 0],
        "peak_rss_kb_end": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "peak_rss_kb_last_step": RSS_AT_STEP[-1] if RSS_AT_STEP else None,
        "threads": torch.get_num_threads(), "wall_s": total, **extra,
    }), flush=True)


if __name__ == "__main__":
    main()
