"""Model roles: every model a run holds, loaded, placed, sharded and checkpointed by one mechanism.

A role names a model and how the run holds it. The trained policy is the one trainable role: the
layout turns it into the training engine and checkpoints hold its weights and optimiser state.
Every other role (reference, teacher; later critic, preference model, opponent) is frozen: loaded
from its source, put on the run's device in the run's dtype, switched to inference, and held the way
the layout holds models (``layout.prepare``: sharded under FSDP) when it runs inside the training
step. Frozen roles are never checkpointed: a resumed run loads them again from their source, and a
copy of the initial policy is rebuilt from the checkpoint's first step (the reference cache keeps
its precomputed values; see ``reference.py``).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from unigrad.models import is_peft, load_model

INITIAL_POLICY = "policy"   # a role's source: a frozen copy of the policy as it was before training


@dataclass(frozen=True)
class Role:
    name: str                 # "reference", "teacher", …
    source: str               # a model name or folder (like model.name), or INITIAL_POLICY
    prepared: bool = True     # held as the layout holds models (sharded with the policy), else whole


def load_role(role: Role, policy, layout, device: torch.device, dtype: torch.dtype, trust_remote_code: bool = False):
    """The frozen model of ``role``. A copy of a LoRA policy is the policy itself with its adapters
    switched off by the caller (no second copy of the base weights)."""
    if role.source == INITIAL_POLICY:
        if is_peft(policy):
            return layout.prepare(policy)
        model = copy.deepcopy(policy)
    else:
        model, _ = load_model(role.source, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
    model = model.eval().requires_grad_(False)
    return layout.prepare(model) if role.prepared else model
