"""State a run carries besides the policy and its optimiser, checkpointed with them.

A part, producer or update rule that learns something across steps (a running mean, a rationale
memory, a critic) is ``Stateful``: a unique ``state_name``, ``checkpoint_state()`` (tensors and
JSON-able values by key) and ``restore_state(state)``. ``stateful(*roots)`` finds every such object
reachable from the run's objective, experience producer and update rule through dataclass fields,
lists, tuples and dicts, so nothing has to register itself; ``checkpoint.save_checkpoint`` writes their
states and ``load_checkpoint`` restores them with the weights, so a resumed run continues from the
same state as an uninterrupted one.

``checkpoint_state()`` is collective: every process calls it (through ``split``, in ``train.save``) and
only the main process's result is written, so a part held sharded (the critic under FSDP or ZeRO) can
gather its full tensors there; a part held whole in each process just returns its own state, the same
on every process. ``restore_state`` is called on every process with the whole saved state.
"""
from __future__ import annotations

import dataclasses
from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class Stateful(Protocol):
    state_name: str

    def checkpoint_state(self) -> dict: ...

    def restore_state(self, state: dict) -> None: ...


def _children(value) -> list:
    if isinstance(value, dict):
        return list(value.values())
    if isinstance(value, (list, tuple)):
        return list(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [getattr(value, f.name) for f in dataclasses.fields(value)]
    return []


def stateful(*roots) -> dict[str, Stateful]:
    """Every ``Stateful`` reachable from ``roots``, by ``state_name`` (a name used twice is an error:
    the two states would overwrite each other in the checkpoint)."""
    found, seen, todo = {}, set(), list(roots)
    while todo:
        value = todo.pop()
        if value is None or id(value) in seen or isinstance(value, (torch.Tensor, torch.nn.Module, str, int, float)):
            continue
        seen.add(id(value))
        if isinstance(value, Stateful):
            name = value.state_name
            if not isinstance(name, str) or not name or "/" in name:
                raise ValueError(f"state_name {name!r}: a non-empty name without '/' (the checkpoint keys its "
                                 "tensors name/key)")
            if name in found and found[name] is not value:
                raise ValueError(f"two parts of the run keep state under the name {name!r}; give them distinct "
                                 "state_name values")
            found[name] = value
        todo.extend(_children(value))
    return found


def split(states: dict[str, Stateful], keep: bool = True) -> tuple[dict[str, torch.Tensor], dict]:
    """The states as (tensors keyed "name/key", JSON-able values by name and key) for safetensors + JSON;
    collective (every process calls it, in the same order: by name), the main process's result is whole.
    ``keep=False`` (the processes that write nothing): each part still gathers, nothing is copied."""
    tensors, values = {}, {}
    for name, part in sorted(states.items()):
        values[name] = {}
        for key, value in part.checkpoint_state().items():
            if not keep:
                continue
            if isinstance(value, torch.Tensor):
                tensors[f"{name}/{key}"] = value.detach().contiguous().cpu()
            else:
                values[name][key] = value
    return tensors, values


def join(tensors: dict[str, torch.Tensor], values: dict) -> dict[str, dict]:
    """``split``'s inverse: each state's entries by name."""
    out = {name: dict(entries) for name, entries in values.items()}
    for key, tensor in tensors.items():
        name, _, entry = key.partition("/")
        out.setdefault(name, {})[entry] = tensor
    return out


def restore(states: dict[str, Stateful], saved: dict[str, dict]) -> None:
    """Hand each part its saved state (every name of ``states`` is in ``saved``: checked by the caller
    before anything is restored)."""
    for name, part in states.items():
        part.restore_state(saved[name])


__all__ = ["Stateful", "join", "restore", "split", "stateful"]
