"""Checkpoints that resume exactly, written atomically, loaded without pickle.

    checkpoints/step-000012/
      model/                  HF-format folder (merged weights for LoRA): AutoModelForCausalLM loads it
      trainable.safetensors   every trainable parameter by name, only when not all parameters train (LoRA):
                              with full fine-tuning resuming reads them from model/ (no second copy)
      optimizer.safetensors   optimiser state tensors; optimizer.json the rest of its state dict
      state.json              step, RNG states, config
      states.safetensors      the run's other learned state (``unigrad.state``: a critic, a running mean, a
      states.json             memory), tensors and JSON-able values, when the run has any

A checkpoint is written into a temporary sibling folder and renamed into place, so a run killed
mid-write leaves the previous checkpoint intact; a write that fails (disk full, permissions) removes
its temporary folder and stops with a clear error. Resuming reads the newest checkpoint whole before
touching the model, and falls back to the previous one when its files are incomplete or corrupt.
"""
from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from unigrad import state as run_state
from unigrad.guards import RunError
from unigrad.models import is_peft, save_model
from unigrad.parallel import Processes, Replicated

log = logging.getLogger("unigrad")


class CheckpointError(RunError):
    """A checkpoint could not be written."""


class MissingState(RunError):
    """A checkpoint lacks learned state this run has (written by a run without a critic, a running mean, …):
    resuming from it, or from an older one, cannot reach the uninterrupted result."""

_STEP = re.compile(r"^step-(\d+)$")


def _optimizer_state(state: dict) -> tuple[dict, dict]:
    tensors, meta = {}, {"param_groups": state["param_groups"], "state": {}}
    for pid, entries in state["state"].items():
        meta["state"][str(pid)] = {}
        for key, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{key}"] = value.detach().contiguous().cpu()
                meta["state"][str(pid)][key] = {"tensor": f"{pid}.{key}"}
            else:
                meta["state"][str(pid)][key] = {"value": value}
    return tensors, meta


def _read_optimizer_state(folder: Path) -> dict:
    tensors = load_file(str(folder / "optimizer.safetensors"))
    meta = json.loads((folder / "optimizer.json").read_text())
    state = {int(pid): {key: (tensors[v["tensor"]] if "tensor" in v else v["value"]) for key, v in entries.items()}
             for pid, entries in meta["state"].items()}
    return {"state": state, "param_groups": meta["param_groups"]}


def _rng_state() -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {"python": [version, list(internal), gauss],
            "numpy": [kind, keys.tolist(), pos, has_gauss, cached]}


def _set_rng_state(state: dict, torch_state: torch.Tensor) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch_state)


def save_checkpoint(root: Path, step: int, model, tokenizer, optimizer_state: dict, config: dict, keep: int,
                    weights: dict | None = None, data: str | None = None, states: tuple | None = None) -> Path:
    """Write checkpoint ``step`` of ``model`` (or of ``weights``, full tensors by name, when the model is
    sharded over processes) with the optimiser's ``state_dict()``-layout state, the config, the data's
    fingerprint it was trained under and the run's other states as ``unigrad.state.split`` gave them
    (tensors, values): gathered by every process, written by this one; keep the last ``keep``."""
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}-{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        _write(tmp, step, model, tokenizer, optimizer_state, config, weights, data, states or ({}, {}))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except OSError as error:
        shutil.rmtree(tmp, ignore_errors=True)
        previous = list_checkpoints(root)
        raise CheckpointError(f"could not write checkpoint {final} ({error.strerror or error}); "
                              + (f"the previous checkpoint {previous[-1]} is intact" if previous else
                                 "no earlier checkpoint exists") + ". Free disk space or fix the folder's "
                              "permissions, then run again with --resume") from None
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def remove_partial_writes(root: Path) -> None:
    """Temporary folders left by a run killed while writing a checkpoint."""
    for tmp in root.glob(".tmp-step-*") if root.is_dir() else ():
        shutil.rmtree(tmp, ignore_errors=True)


def _write(tmp: Path, step: int, model, tokenizer, optimizer_state: dict, config: dict, weights, data,
           states: tuple) -> None:
    save_model(model, tokenizer, tmp / "model", weights)
    if not all(p.requires_grad for p in model.parameters()) or is_peft(model):
        trainable = {name: p.detach().contiguous().cpu() for name, p in model.named_parameters() if p.requires_grad}
        save_file(trainable, str(tmp / "trainable.safetensors"))
    tensors, meta = _optimizer_state(optimizer_state)
    tensors["__torch_rng__"] = torch.get_rng_state()
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    (tmp / "optimizer.json").write_text(json.dumps(meta))
    tensors, values = states
    if values:       # one entry per state, so empty: the run has none
        save_file(tensors, str(tmp / "states.safetensors"))
        (tmp / "states.json").write_text(json.dumps(values))
    (tmp / "state.json").write_text(json.dumps({"step": step, "rng": _rng_state(), "config": config, "data": data},
                                               indent=1))


def list_checkpoints(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP.match(p.name)) and (p / "state.json").exists()]
    return [p for _, p in sorted(found)]


def checkpoint_weights(folder: Path) -> dict:
    """The trainable parameters saved in checkpoint ``folder``, by name: its trainable.safetensors, or
    (full fine-tuning) the weights of its HF folder."""
    if (folder / "trainable.safetensors").exists():
        return load_file(str(folder / "trainable.safetensors"))
    tensors = {}
    for shard in sorted((folder / "model").glob("*.safetensors")):
        tensors.update(load_file(str(shard)))
    return tensors


def read_state(folder: Path) -> dict:
    """A checkpoint's ``state.json``: its step, RNG states, config and data fingerprint."""
    return json.loads((folder / "state.json").read_text())


def read_states(folder: Path) -> dict[str, dict]:
    """A checkpoint's other learned states by name (``unigrad.state``); empty when it has none."""
    if not (folder / "states.json").exists():
        return {}
    return run_state.join(load_file(str(folder / "states.safetensors")),
                          json.loads((folder / "states.json").read_text()))


def load_checkpoint(folder: Path, model, optimizer, layout=None, states: dict | None = None) -> int:
    """Restore parameters, optimiser, RNG state and the run's other ``states`` from ``folder``; returns
    its step. ``layout``: how the processes hold the model (a ``parallel.Layout``; default: whole in this
    process). Every file is read before anything is restored, so a checkpoint that cannot be read leaves
    the model as it was."""
    state = read_state(folder)
    saved = read_states(folder)
    if states and set(states) - set(saved):
        missing = ", ".join(sorted(set(states) - set(saved)))
        raise MissingState(f"checkpoint {folder} holds no state for {missing}: it was written by a run without it. "
                           "Resume with the config it was written with, or start in a new output_dir")
    trainable = checkpoint_weights(folder)
    optimizer_state = _read_optimizer_state(folder)
    torch_rng = load_file(str(folder / "optimizer.safetensors"))["__torch_rng__"]
    params = dict(model.named_parameters())
    missing = [name for name, p in params.items() if p.requires_grad and name not in trainable]
    if missing:
        raise ValueError(f"checkpoint {folder} does not match this model (missing {missing[:3]}...)")
    (layout or Replicated(Processes())).load_full_state(model, optimizer, trainable, optimizer_state)
    run_state.restore(states or {}, saved)
    _set_rng_state(state["rng"], torch_rng)
    return int(state["step"])


def load_latest(root: Path, model, optimizer, layout, check=lambda state, folder: None,
                states: dict | None = None) -> int:
    """Resume from the newest readable checkpoint under ``root`` (``check(state, folder)`` may refuse
    it); one whose files are incomplete or corrupt is skipped for the one before, with a message.
    Returns the step resumed from (0: none)."""
    for folder in reversed(list_checkpoints(root)):
        try:
            check(read_state(folder), folder)
            step = load_checkpoint(folder, model, optimizer, layout, states)
        except (OSError, ValueError, KeyError, SafetensorError) as error:
            log.warning("checkpoint %s is incomplete or corrupt (%s: %s): trying the one before", folder,
                        type(error).__name__, error)
            continue
        log.info("resumed from %s", folder)
        return step
    log.info("no readable checkpoint in %s: starting from step 0", root)
    return 0
