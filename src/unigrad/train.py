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
from functools import partial
from pathlib import Path

import torch

from unigrad import state as run_state
from unigrad.batch import Batch
from unigrad.checkpoint import load_latest, remove_partial_writes, save_checkpoint
from unigrad.config import RunConfig, to_dict
from unigrad.data.packing import collate
from unigrad.experience import Experience
from unigrad.gradients import MicroBatch, StepSums
from unigrad.guards import Preempted, Preemption, check_finite_weights, check_resume, finite
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

    def __call__(self, experience: Experience, rows: list[int], whole: Batch, objective=None, logprobs=None):
        """The run's objective and log-prob producer on these rows, or the given ones (an update rule's
        second loss on the step's data, e.g. Sophia's curvature estimate)."""
        r = self.run
        own = objective is None
        objective, logprobs = objective or r.objective, logprobs or r.logprobs
        sequences = [experience.sequences[i] for i in rows]
        tb = collate(sequences, r.tokenizer.pad_token_id, packed=r.config.data.packed).to(r.device)
        produced = logprobs(r.engine, sequences, tb)
        logp = produced.pop("logp")
        fields = experience.row_fields(rows, logp.shape[1])
        fields["extra"].update(produced)
        if r.reference is not None and (own or "logp_ref" in objective.requires):
            keys = [experience.reference_keys[i] for i in rows] if experience.reference_keys else None
            fields["logp_ref"] = r.reference(keys, tb, logp.dtype)
        batch = Batch(logp=logp, mask=tb.completion_mask.to(logp.dtype), group=tb.group, sign=tb.sign.to(logp.dtype),
                      step=whole, rows=torch.tensor(rows), **fields).to_device(r.device)
        out = objective.loss(batch)
        if batch.logp_ref is not None:   # a diagnostic whether or not the loss has it
            out.metrics["kl_ref"] = reference_kl(batch)
        return out, sum(s.length for s in sequences)


def _micro_batches(run: Run, experience: Experience) -> list[MicroBatch]:
    """This process's micro-batches of the step: its units in processes × grad_accum contiguous chunks
    (a step may hold fewer units than batch_size, e.g. after DAPO's dynamic sampling); this process
    trains chunks rank·grad_accum …"""
    t, procs = run.config.train, run.procs
    whole = experience.step_batch(run.device)
    chunks = [c.tolist() for c in torch.arange(len(experience.units)).tensor_split(procs.world * t.grad_accum)]
    mine = [chunk for chunk in chunks[procs.rank * t.grad_accum:(procs.rank + 1) * t.grad_accum] if chunk]
    loss_of = StepLoss(run)
    return [MicroBatch(partial(loss_of, whole=whole), experience, experience.rows_of(chunk)) for chunk in mine]


def optimise(run: Run, experience: Experience, step: int) -> tuple[StepSums, float]:
    """``experience.epochs`` updates on one step's experience; this process trains its contiguous
    share of the step's units in ``grad_accum`` micro-batches; sums are over processes."""
    t, procs = run.config.train, run.procs
    micro_batches = _micro_batches(run, experience)
    latest, calls = [], [0]

    def gradients(estimator=None, fresh: bool = False) -> StepSums:
        """The run's gradient estimator (or an update rule's own, e.g. a curvature estimate) on the
        step; key: (step, call), so an estimator's random draws repeat on resume. ``fresh``: on the
        step's experience drawn again at the current weights, where its producer can (``Experience.again``)."""
        key, calls[0] = step * 64 + calls[0], calls[0] + 1
        batches = _micro_batches(run, experience.again()) if fresh and experience.again else micro_batches
        sums = (estimator or run.gradients)(batches, lambda loss: run.layout.backward(run.engine, loss), key)
        if estimator is None:
            latest[:] = [sums]
        return sums

    def apply() -> float:   # a non-finite loss on any process: no process applies the step
        skip = procs.sum(float(not finite(latest[0].surrogate, latest[0].objective))) > 0
        return run.layout.update(run.engine, run.optimizer, run.params, t.max_grad_norm, skip)

    tokens = 0
    for _ in range(run.experience.epochs):
        sums, grad_norm = run.update(step, gradients, apply)
        tokens += sums.tokens
    sums.tokens = tokens
    if procs.world > 1:
        sums = StepSums(procs.sum(sums.surrogate), procs.sum(sums.objective), int(procs.sum(sums.tokens)),
                        {key: procs.sum(value) / procs.world for key, value in sorted(sums.metrics.items())})
    return sums, grad_norm


def held_out(run: Run, step: int) -> dict:
    return {f"eval/{key}": value for key, value in run.held_out(StepLoss(run), step).items()}


def save(run: Run, done: int) -> Path:
    """Checkpoint ``done`` (collective): never with a non-finite weight."""
    check_finite_weights(run.model, run.procs, done, "the checkpoint")
    weights = run.layout.full_weights(run.model)
    state = run.layout.full_optimizer_state(run.model, run.optimizer)
    states = run_state.split(run.states, keep=run.procs.main)   # collective: a sharded critic gathers its state
    folder = run.out_dir / "checkpoints"
    if run.procs.main:
        folder = save_checkpoint(folder, done, run.model, run.tokenizer, state, to_dict(run.config),
                                 run.config.train.keep_checkpoints, weights, run.fingerprint, states)
    return folder


def train(config: RunConfig, resume: bool = False, progress: bool = True, force: bool = False) -> dict:
    """Run ``config``; returns the final metrics. With ``resume`` it continues from the last good
    checkpoint in ``output_dir`` (refused if the config or data changed what the result would be,
    unless ``force``) and reaches the same result as an uninterrupted run."""
    run = assemble(config)
    t, procs, model = config.train, run.procs, run.model
    checkpoints, forced = run.out_dir / "checkpoints", []
    if procs.main:
        remove_partial_writes(checkpoints)
    start = load_latest(checkpoints, model, run.optimizer, run.layout, lambda state, folder: forced.extend(
        check_resume(state, to_dict(config), run.fingerprint, folder, force)), run.states) if resume else 0
    if start:    # the sampler's own copy of the policy (FSDP, ZeRO-3, vLLM) still holds the initial weights
        run.experience.after_update()
    if procs.main:
        (run.out_dir / "config.json").write_text(json.dumps(to_dict(config), indent=1, default=str))
    metrics_log = MetricsLog(run.out_dir, start, t.tensorboard) if procs.main else None
    before = held_out(run, 0) if start == 0 else {}
    if procs.main and (before or forced):
        metrics_log.write(start, {**before, **({"resume_forced": "; ".join(forced)} if forced else {})})
        if before:
            log.info("held-out before training: %s", _brief(before))

    model.train()
    bar = _progress(t.steps, start, progress and procs.main)
    last = {}
    with Preemption() as preemption:
        for step in range(start, t.steps):
            started = time.perf_counter()
            experience = run.experience(step)
            lr = learning_rate(step, t)
            for group in run.optimizer.param_groups:
                group["lr"] = lr
            sums, grad_norm = optimise(run, experience, step)
            run.experience.after_update()
            done, seconds = step + 1, time.perf_counter() - started
            run.guard(done, sums.objective, sums.surrogate, grad_norm)
            last = {"objective": sums.objective, "surrogate": sums.surrogate, "lr": lr, "grad_norm": grad_norm,
                    "nonfinite_skipped": run.guard.skipped, "tokens_per_s": sums.tokens / seconds,
                    "step_seconds": seconds, **sums.metrics, **experience.metrics}
            if (t.eval_every and done % t.eval_every == 0) or done == t.steps:
                last.update(held_out(run, done))
            if procs.main and (done % t.log_every == 0 or done == t.steps):
                metrics_log.write(done, last)
            bar.update(1)
            bar.set_postfix(_postfix(last))
            saved = t.save_every and done % t.save_every == 0 and done != t.steps
            folder = save(run, done) if saved else None
            if done != t.steps and (signum := preemption.requested(procs)):
                bar.close()
                raise Preempted(signum, done, folder or save(run, done))
    bar.close()
    check_finite_weights(model, procs, t.steps, "the final model")
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
