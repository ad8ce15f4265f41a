"""The training loop: one loop for every method.

Each optimiser step: the experience producer gives the step's units (a pair, an example, a prompt
with its rollouts); this process trains its share of them in ``grad_accum`` micro-batches. For each
micro-batch the log-prob producer fills the fields the objective ``requires``, a ``Batch`` that knows
its whole step is built (so normalisation over micro-batches and processes is exact), and the
gradient estimator turns ``objective.loss(batch)`` into gradients; the update rule applies them
through the layout. Every choice (method, producers, models, layout) was made by ``run.assemble``;
nothing here asks which one it has.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

import torch

from unigrad.batch import Batch
from unigrad.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from unigrad.config import RunConfig, to_dict
from unigrad.data.packing import collate
from unigrad.experience import Experience
from unigrad.gradients import StepSums
from unigrad.models import save_model
from unigrad.objectives import reference_kl
from unigrad.optim import learning_rate
from unigrad.report import MetricsLog
from unigrad.run import Run, assemble

log = logging.getLogger("unigrad")


@dataclass(frozen=True)
class StepLoss:
    """The objective's output on rows of an experience whose whole step is ``whole``."""
    run: Run

    def __call__(self, experience: Experience, rows: list[int], whole: Batch):
        r = self.run
        sequences = [experience.sequences[i] for i in rows]
        tb = collate(sequences, r.tokenizer.pad_token_id, packed=r.config.data.packed).to(r.device)
        produced = r.logprobs(r.engine, sequences, tb)
        logp = produced.pop("logp")
        fields = experience.row_fields(rows, logp.shape[1])
        fields["extra"].update(produced)
        if r.reference is not None:
            keys = [experience.reference_keys[i] for i in rows] if experience.reference_keys else None
            fields["logp_ref"] = r.reference(keys, tb, logp.dtype)
        batch = Batch(logp=logp, mask=tb.completion_mask.to(logp.dtype), group=tb.group, sign=tb.sign.to(logp.dtype),
                      step=whole, rows=torch.tensor(rows), **fields).to_device(r.device)
        out = r.objective.loss(batch)
        if batch.logp_ref is not None:   # a diagnostic whether or not the loss has it
            out.metrics["kl_ref"] = reference_kl(batch)
        return out, sum(s.length for s in sequences)


def optimise(run: Run, experience: Experience, step: int) -> tuple[StepSums, float]:
    """``experience.epochs`` updates on one step's experience; this process trains its contiguous
    share of the step's units in ``grad_accum`` micro-batches; sums are over processes."""
    t, procs = run.config.train, run.procs
    whole = experience.step_batch(run.device)
    # The step's units in processes × grad_accum contiguous chunks (a step may hold fewer units than
    # batch_size, e.g. after DAPO's dynamic sampling); this process trains chunks rank·grad_accum …
    chunks = [c.tolist() for c in torch.arange(len(experience.units)).tensor_split(procs.world * t.grad_accum)]
    mine = [chunk for chunk in chunks[procs.rank * t.grad_accum:(procs.rank + 1) * t.grad_accum] if chunk]
    loss_of = StepLoss(run)
    micro_batches = [lambda chunk=chunk: loss_of(experience, experience.rows_of(chunk), whole) for chunk in mine]

    def gradients() -> StepSums:
        return run.gradients(micro_batches, lambda loss: run.layout.backward(run.engine, loss))

    def apply() -> float:
        return run.layout.update(run.engine, run.optimizer, run.params, t.max_grad_norm)

    tokens = 0
    for _ in range(run.experience.epochs):
        sums, grad_norm = run.update(step, gradients, apply)
        tokens += sums.tokens
    sums.tokens = tokens
    if procs.world > 1:
        sums = StepSums(procs.sum(sums.surrogate), procs.sum(sums.objective), int(procs.sum(sums.tokens)),
                        {key: procs.sum(value) / procs.world for key, value in sorted(sums.metrics.items())})
    return sums, grad_norm


def held_out(run: Run) -> dict:
    return {f"eval/{key}": value for key, value in run.held_out(StepLoss(run)).items()}


def train(config: RunConfig, resume: bool = False, progress: bool = True) -> dict:
    """Run ``config``; returns the final metrics. With ``resume`` it continues from the last
    checkpoint in ``output_dir`` and reaches the same result as an uninterrupted run."""
    run = assemble(config)
    t, procs, model = config.train, run.procs, run.model
    checkpoints = run.out_dir / "checkpoints"
    start = 0
    if resume and list_checkpoints(checkpoints):
        start = load_checkpoint(list_checkpoints(checkpoints)[-1], model, run.optimizer, run.layout)
        log.info("resumed from %s", list_checkpoints(checkpoints)[-1])
    elif resume:
        log.info("no checkpoint in %s: starting from step 0", checkpoints)
    if procs.main:
        (run.out_dir / "config.json").write_text(json.dumps(to_dict(config), indent=1, default=str))
    metrics_log = MetricsLog(run.out_dir, start, t.tensorboard) if procs.main else None
    before = held_out(run) if start == 0 else {}
    if before and procs.main:
        metrics_log.write(0, before)
        log.info("held-out before training: %s", _brief(before))

    model.train()
    bar = _progress(t.steps, start, progress and procs.main)
    last = {}
    for step in range(start, t.steps):
        started = time.perf_counter()
        experience = run.experience(step)
        lr = learning_rate(step, t)
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        sums, grad_norm = optimise(run, experience, step)
        run.experience.after_update()
        seconds = time.perf_counter() - started
        last = {"objective": sums.objective, "surrogate": sums.surrogate, "lr": lr, "grad_norm": grad_norm,
                "tokens_per_s": sums.tokens / seconds, "step_seconds": seconds, **sums.metrics, **experience.metrics}
        done = step + 1
        if (t.eval_every and done % t.eval_every == 0) or done == t.steps:
            last.update(held_out(run))
        if procs.main and (done % t.log_every == 0 or done == t.steps):
            metrics_log.write(done, last)
        bar.update(1)
        bar.set_postfix(_postfix(last))
        if t.save_every and done % t.save_every == 0 and done != t.steps:
            weights, state = run.layout.full_weights(model), run.layout.full_optimizer_state(model, run.optimizer)
            if procs.main:
                save_checkpoint(checkpoints, done, model, run.tokenizer, state, to_dict(config), t.keep_checkpoints,
                                weights)
    bar.close()
    weights = run.layout.full_weights(model)
    summary = {"steps": t.steps, "final_model": str(run.out_dir / "final"), **last,
               **{f"before/{key}": value for key, value in before.items()}}
    if not procs.main:
        procs.barrier()
        return summary
    metrics_log.close()
    save_model(model, run.tokenizer, run.out_dir / "final", weights)
    (run.out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    try:
        from unigrad.report import write_report
        summary["report"] = str(write_report(run.out_dir))
    except Exception as error:  # the report must never lose a trained model
        log.warning("could not write the report: %s", error)
    procs.barrier()
    return summary


def _brief(metrics: dict) -> str:
    keys = [k for k in metrics if k.split("/")[-1] in ("accuracy", "reward_mean", "objective", "reward_margin")]
    return ", ".join(f"{k}={metrics[k]:.4g}" for k in keys)


def _postfix(last: dict) -> dict:
    shown = {"objective": f"{last['objective']:.4f}", "tok_s": f"{last['tokens_per_s']:.0f}"}
    if "surrogate" in last:
        shown["surrogate"] = f"{last['surrogate']:.4f}"
    if "reward_mean" in last:
        shown["reward"] = f"{last['reward_mean']:.3f}"
    return shown


def _progress(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=initial, disable=not enabled, desc="train", unit="step", dynamic_ncols=True)
