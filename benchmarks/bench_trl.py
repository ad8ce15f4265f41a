"""One TRL repetition (one process): SFT or DPO on SmolLM2-135M-Instruct, fp32, CPU.

Run by benchmarks/run.py with the TRL venv:
    .venv-bench/bin/python benchmarks/bench_trl.py METHOD STEPS BATCH OUT_DIR MODEL_FOLDER DATA_JSON [OPTIM]
DATA_JSON holds the examples already tokenised by unigrad, in the order unigrad's steps draw them,
so both frameworks see exactly the same token ids in the same batches. TRL reads them in order
(sequential sampler). Prints one JSON line (prefix BENCH_RESULT) like bench_unigrad.py.
"""
from __future__ import annotations

import json
import resource
import sys
import time

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


def main() -> None:
    method, steps, batch, out_dir, folder, data_json = sys.argv[1:7]
    optim = sys.argv[7] if len(sys.argv) > 7 else "adamw_torch"   # TRL's own default is adamw_torch_fused
    steps, batch = int(steps), int(batch)
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
                  adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, max_grad_norm=1.0, optim=optim,
                  bf16=False, fp16=False, use_cpu=True, gradient_checkpointing=False, report_to=[],
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
        "framework": "trl", "method": method, "optim": optim, "step_ends": STEP_ENDS, "losses": losses,
        "peak_rss_kb_end": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "peak_rss_kb_last_step": RSS_AT_STEP[-1] if RSS_AT_STEP else None,
        "threads": torch.get_num_threads(), "wall_s": total,
    }), flush=True)


if __name__ == "__main__":
    main()
