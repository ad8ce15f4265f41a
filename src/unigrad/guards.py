"""What keeps a run from ending worse than it started: non-finite steps, resume checks, preemption.

- ``NonFiniteGuard``: a step whose loss or gradient norm is not finite is not applied (the layout
  skips the optimiser step); after ``limit`` such steps in a row the run stops, naming the step, the
  last finite values and what to try. Weights are checked before every save, so a non-finite weight
  never reaches a checkpoint or the final model.
- ``check_resume``: a checkpoint records the config and a fingerprint of the data it was written
  under; resuming under a config that would change the result is refused, key by key.
- ``Preemption``: SIGTERM / SIGINT set a flag; the loop writes a checkpoint at the end of the current
  step and stops with ``Preempted`` (exit code 128 + the signal's number).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import signal
import time
from dataclasses import dataclass, field

import torch

log = logging.getLogger("unigrad")


class RunError(RuntimeError):
    """A run stopped for a reason the user can act on (its message says what to try)."""


class Preempted(RuntimeError):
    """A run stopped by a signal after writing a checkpoint; ``--resume`` continues it."""

    def __init__(self, signum: int, step: int, checkpoint):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        super().__init__(f"stopped by {signal.Signals(signum).name} after step {step}; checkpoint {checkpoint} "
                         f"written: run again with --resume to continue")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


# ---------------------------------------------------------------------------- non-finite steps

def finite(*values: float) -> bool:
    return all(math.isfinite(float(v)) for v in values)


@dataclass
class NonFiniteGuard:
    """Counts skipped steps; stops the run after ``limit`` non-finite steps in a row. ``limit = 1`` for
    layouts that cannot skip an update (DeepSpeed's engine, updates inside backward): there the run
    stops at the first one, before anything is saved."""
    limit: int = 3
    skipped: int = 0
    in_row: int = 0
    last_finite: dict = field(default_factory=dict)

    def __call__(self, step: int, objective: float, surrogate: float, grad_norm: float) -> bool:
        """Whether step ``step`` (1-based) was non-finite, hence not applied; raises after ``limit`` in a row."""
        if finite(objective, surrogate, grad_norm):
            self.in_row = 0
            self.last_finite = {"step": step, "objective": objective, "grad_norm": grad_norm}
            return False
        self.skipped += 1
        self.in_row += 1
        log.warning("step %d: non-finite %s (objective %s, grad norm %s): update not applied (%d in a row)", step,
                    "loss" if not finite(objective, surrogate) else "gradient norm", objective, grad_norm, self.in_row)
        if self.in_row >= self.limit:
            last = (f"the last finite step was {self.last_finite['step']} (objective {self.last_finite['objective']:.6g}, "
                    f"grad norm {self.last_finite['grad_norm']:.6g})" if self.last_finite else "no step was finite")
            raise RunError(f"training diverged: {self.in_row} non-finite steps in a row, the last at step {step} "
                           f"(objective {objective}, grad norm {grad_norm}); {last}. Nothing non-finite was saved. "
                           f"Try a lower train.lr, train.max_grad_norm (e.g. 1.0), more train.warmup_steps, or "
                           f"model.dtype: float32; train.max_nonfinite_steps sets how many are skipped in a row")
        return True


def _local(tensor):
    """This process's shard of a sharded (DTensor) parameter, or the tensor itself."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def check_finite_weights(model, procs, step: int, where: str) -> None:
    """Refuse to save ``where`` when any weight of any process is not finite (collective)."""
    bad = [name for name, p in model.named_parameters() if not bool(torch.isfinite(_local(p.detach())).all())]
    if procs.sum(float(len(bad))) > 0:
        raise RunError(f"step {step}: weights are not finite ({', '.join(bad[:3]) or 'on another process'}); "
                       f"{where} was not written, the previous checkpoints are intact. Try a lower train.lr or "
                       f"train.max_grad_norm")


# ---------------------------------------------------------------------------- resume

def fingerprint(items) -> str:
    """A digest of the training data as the run reads it (token ids, groups, signs, per-row numbers)."""
    digest = hashlib.sha256()
    for item in items:
        digest.update(repr(item).encode())
    return digest.hexdigest()


# Settings that change what is logged, saved or shown, how long the run goes on, or how the same
# update is computed (the layouts, the shared-prompt forward, chunking and packing are tested equal),
# not the result.
RESUMABLE = ("train.steps", "train.eval_every", "train.eval_batch_size", "train.save_every", "train.keep_checkpoints",
             "train.log_every", "train.tensorboard", "train.threads", "train.track_kl", "train.max_nonfinite_steps",
             "train.fsdp", "train.deepspeed", "train.optimizer_in_backward", "train.share_prompts", "train.chunk_size",
             "data.packed", "data.eval", "output_dir", "source")


def _flat(tree, prefix: str = "") -> dict:
    if isinstance(tree, dict) and tree and not prefix.startswith("method"):
        return {k: v for key, value in tree.items() for k, v in _flat(value, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): tree}


def resume_differences(saved: dict, current: dict) -> list[str]:
    """The keys whose change would change the result, as "key: checkpoint → now"."""
    before, after = _flat(saved), _flat(json.loads(json.dumps(current, default=str)))   # as the checkpoint stores it
    keys = sorted(set(before) | set(after))
    return [f"{key}: {before.get(key)!r} in the checkpoint, {after.get(key)!r} now" for key in keys
            if before.get(key) != after.get(key) and not key.startswith(RESUMABLE)]


def check_resume(state: dict, config: dict, fingerprint: str, folder, force: bool) -> list[str]:
    """Refuse (RunError) to resume from checkpoint ``folder`` (its ``state.json`` is ``state``) under a
    config or data that would change the result; with ``force``, return the differences instead."""
    differences = resume_differences(state.get("config", {}), config)
    if state.get("data") not in (None, fingerprint):
        differences.append("the training data: its contents differ from those the checkpoint was trained on")
    if state.get("step", 0) > config["train"]["steps"]:
        differences.append(f"train.steps: {config['train']['steps']} is below the checkpoint's step {state['step']}")
    if differences and not force:
        raise RunError(f"--resume: {folder} was written under another config, and continuing would not give the "
                       f"run it started: " + "; ".join(differences) + ". Undo the change, use another output_dir, "
                       f"or --force to continue anyway")
    for difference in differences:
        log.warning("--resume --force: %s", difference)
    return differences


# ---------------------------------------------------------------------------- preemption

class Preemption:
    """While active, SIGTERM and SIGINT set ``signum`` instead of stopping the process. The same signal
    may reach a process twice at once (from the terminal and from a launcher forwarding it); a SIGINT
    more than a second after the first stops the process at once (Ctrl-C twice)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum, self._since, self._previous = 0, 0.0, {}

    def __enter__(self) -> "Preemption":
        try:
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        except ValueError:      # not the main thread: signals stay as they are
            self._previous = {}
        return self

    def _handle(self, signum, frame) -> None:
        if self.signum and signum == signal.SIGINT and time.monotonic() - self._since > 1.0:
            raise KeyboardInterrupt
        if not self.signum:
            log.warning("%s received: stopping after this step with a checkpoint", signal.Signals(signum).name)
            self.signum, self._since = signum, time.monotonic()

    def requested(self, procs) -> int:
        """The signal this process received, SIGTERM if only another one did (collective), or 0."""
        if procs.sum(float(self.signum)) == 0:
            return 0
        return self.signum or int(signal.SIGTERM)

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
