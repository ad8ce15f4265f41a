"""One TRL repetition (one process): SFT, DPO or GRPO on SmolLM2-135M-Instruct, fp32, CPU.

Run by benchmarks/run.py with the TRL venv:
    .venv-bench/bin/python benchmarks/bench_trl.py METHOD STEPS BATCH OUT_DIR MODEL_FOLDER DATA_JSON [OPTIM [REPLAY_JSON]]
DATA_JSON holds the examples already tokenised by unigrad, in the order unigrad's steps draw them,
so both frameworks see exactly the same token ids in the same batches. TRL reads them in order
(sequential sampler). Prints one JSON line (prefix BENCH_RESULT) like bench_unigrad.py.

grpo: DATA_JSON holds the prompts (text, answer and unigrad's prompt token ids) in unigrad's step
order; TRL gets them as conversational prompts (it applies the same chat template; the ids it ends
up with are reported per step and checked by run.py) and BATCH prompts × 4 generations per step.
The reward is unigrad's ``numeric_match``, loaded from its file (the unigrad package is not imported here).
With REPLAY_JSON (step 1's rollouts of a unigrad run) TRL's generation is replaced by those
completion ids: its first-step loss and gradient norm can then be compared with unigrad's.
"""
from __future__ import annotations

import json
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
    original = torch.optim.AdamW.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.register_step_post_hook(_hook)
    torch.optim.AdamW.__init__ = init


def _verifiable_rewards():
    """unigrad's src/unigrad/rewards/verifiable.py, loaded from its file: it needs only the standard
    library, so the TRL venv runs the very same ``numeric_match`` without importing the unigrad package."""
    import importlib.util
    path = Path(__file__).resolve().parents[1] / "src" / "unigrad" / "rewards" / "verifiable.py"
    spec = importlib.util.spec_from_file_location("unigrad_verifiable_rewards", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_REWARDS = _verifiable_rewards()


def numeric_match_reward(prompts, completions, answer, **kwargs) -> list[float]:
    """TRL reward function: completions are [{"role": "assistant", "content": text}] for conversational
    prompts, text decoded with skip_special_tokens=True (as unigrad's Rollouts.texts)."""
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return [_REWARDS.numeric_match("", text, a) for text, a in zip(texts, answer)]


GRPO_GENERATIONS = 4        # as bench_unigrad.py
GRPO_MAX_NEW_TOKENS = 64


def run_grpo(steps: int, batch: int, out_dir: str, folder: str, data_json: str, optim: str, replay_json: str | None) -> None:
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    rows = json.loads(Path(data_json).read_text())
    replay = json.loads(Path(replay_json).read_text()) if replay_json else None
    if replay:
        steps = 1
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    step_logs: list[dict] = []
    generations: list[tuple[float, float]] = []
    rollouts: list[dict] = []
    rewards_seen: list[list[float]] = []

    class Logs(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                step_logs.append(dict(logs))

    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}], "answer": r["answer"]}
                                 for r in rows[:steps * batch]])
    config = trl.GRPOConfig(
        output_dir=out_dir, max_steps=steps, per_device_train_batch_size=batch * GRPO_GENERATIONS,
        gradient_accumulation_steps=1, num_generations=GRPO_GENERATIONS, steps_per_generation=1, num_iterations=1,
        max_completion_length=GRPO_MAX_NEW_TOKENS, temperature=1.0, top_p=1.0, top_k=0, min_p=None,
        repetition_penalty=1.0, use_vllm=False, loss_type="dapo", epsilon=0.2, epsilon_high=0.2, beta=0.0,
        scale_rewards="group", mask_truncated_completions=False, shuffle_dataset=False,
        learning_rate=1e-5, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, max_grad_norm=1.0, optim=optim,
        bf16=False, fp16=False, use_cpu=True, gradient_checkpointing=False, report_to=[],
        logging_steps=1, save_strategy="no", eval_strategy="no", seed=0, data_seed=0,
        dataloader_num_workers=0, disable_tqdm=True)

    class Trainer(trl.GRPOTrainer):
        def _generate_single_turn(self, prompt_ids, *args, **kwargs):
            started = time.perf_counter()
            if replay is not None:   # step 1's completions as unigrad sampled them
                if [list(p) for p in prompt_ids] != replay["prompt_ids"]:
                    raise RuntimeError("replay: TRL's prompt ids differ from unigrad's")
                out = [list(c) for c in replay["completion_ids"]], None
            else:
                out = super()._generate_single_turn(prompt_ids, *args, **kwargs)
            generations.append((started, time.perf_counter()))
            return out

        def _calculate_rewards(self, *args, **kwargs):
            rewards = super()._calculate_rewards(*args, **kwargs)
            rewards_seen.append(rewards[:, 0].tolist())
            return rewards

        def _generate_and_score_completions(self, inputs):
            started = time.perf_counter()
            out = super()._generate_and_score_completions(inputs)
            ended = time.perf_counter()
            prompt_ids = [ids[mask.bool()].tolist() for ids, mask in zip(out["prompt_ids"], out["prompt_mask"])]
            rollouts.append({"start": started, "end": ended,
                             "tokens": int(out["prompt_mask"].sum() + out["completion_mask"].sum()),
                             "completion_tokens": int(out["completion_mask"].sum()),
                             "prompt_ids": prompt_ids[::GRPO_GENERATIONS]})
            return out

    install_step_hook()
    trainer = Trainer(model=model, reward_funcs=[numeric_match_reward], args=config, train_dataset=dataset,
                      processing_class=tokenizer, callbacks=[Logs()])
    started = time.perf_counter()
    trainer.train()
    total = time.perf_counter() - started
    extra = {}
    if replay is not None:
        extra["replay_rewards"] = rewards_seen[0]
    print("BENCH_RESULT " + json.dumps({
        "framework": "trl", "method": "grpo", "optim": optim, "replay": replay is not None, "step_ends": STEP_ENDS,
        "losses": [log["loss"] for log in step_logs], "grad_norms": [log.get("grad_norm") for log in step_logs],
        "reward_means": [log.get("reward") for log in step_logs],
        "completion_lengths": [log.get("completions/mean_length") for log in step_logs],
        "entropy": [log.get("entropy") for log in step_logs],
        "step_tokens": [r["tokens"] for r in rollouts], "step_completion_tokens": [r["completion_tokens"] for r in rollouts],
        "step_prompt_ids": [r["prompt_ids"] for r in rollouts],
        "rollout_spans": [[r["start"], r["end"]] for r in rollouts], "generation_spans": generations,
        "peak_rss_kb_end": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "peak_rss_kb_last_step": RSS_AT_STEP[-1] if RSS_AT_STEP else None,
        "threads": torch.get_num_threads(), "wall_s": total, "trl": trl.__version__,
        "generation_config": trainer.generation_config.to_diff_dict(), **extra,
    }), flush=True)


def main() -> None:
    method, steps, batch, out_dir, folder, data_json = sys.argv[1:7]
    optim = sys.argv[7] if len(sys.argv) > 7 else "adamw_torch_fused"   # TRL's own default
    no_clip = method.endswith("-noclip")       # the memory comparison: no grad-norm clip on either side
    method = method.removesuffix("-noclip")
    steps, batch = int(steps), int(batch)
    if method == "grpo":
        run_grpo(steps, batch, out_dir, folder, data_json, optim, sys.argv[8] if len(sys.argv) > 8 else None)
        return
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    import trl

    rows = json.load(open(data_json))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    losses: list[float] = []

    class Losses(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    common = dict(output_dir=out_dir, max_steps=steps, per_device_train_batch_size=batch, gradient_accumulation_steps=1,
                  learning_rate=1e-5, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
                  adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, max_grad_norm=0.0 if no_clip else 1.0,
                  optim=optim, bf16=False, fp16=False, use_cpu=True, gradient_checkpointing=False, report_to=[],
                  logging_steps=1, save_strategy="no", eval_strategy="no", seed=0, data_seed=0,
                  dataloader_num_workers=0, disable_tqdm=True, max_length=256)
    if method == "sft":
        dataset = Dataset.from_list([{"input_ids": r["prompt_ids"] + r["completion_ids"],
                                      "completion_mask": [0] * len(r["prompt_ids"]) + [1] * len(r["completion_ids"])}
                                     for r in rows])
        config = trl.SFTConfig(completion_only_loss=True, packing=False, padding_free=False, **common)
        base = trl.SFTTrainer
    else:
        dataset = Dataset.from_list([{"prompt_ids": r["prompt_ids"], "chosen_ids": r["chosen_ids"],
                                      "rejected_ids": r["rejected_ids"]} for r in rows])
        config = trl.DPOConfig(beta=0.1, loss_type=["sigmoid"], precompute_ref_log_probs=True,
                               precompute_ref_batch_size=16, **common)
        base = trl.DPOTrainer

    class Trainer(base):
        def _get_train_sampler(self, *args, **kwargs):  # same order as unigrad's steps
            return torch.utils.data.SequentialSampler(self.train_dataset)

        if method == "dpo":
            def _prepare_dataset(self, dataset, *args, **kwargs):  # already tokenised (prompt_ids/chosen_ids/rejected_ids)
                return dataset

    install_step_hook()
    trainer = Trainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer, callbacks=[Losses()])
    started = time.perf_counter()
    trainer.train()
    total = time.perf_counter() - started
    print("BENCH_RESULT " + json.dumps({
        "framework": "trl", "method": method + ("-noclip" if no_clip else ""), "optim": optim, "clip": not no_clip, "step_ends": STEP_ENDS, "losses": losses,
        "peak_rss_kb_end": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "peak_rss_kb_last_step": RSS_AT_STEP[-1] if RSS_AT_STEP else None,
        "threads": torch.get_num_threads(), "wall_s": total,
    }), flush=True)


if __name__ == "__main__":
    main()
