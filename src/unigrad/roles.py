"""Model roles: every model a run holds, loaded, placed, sharded and checkpointed by one mechanism.

A role names a model and how the run holds it. The trained policy is the one trainable role: the
layout turns it into the training engine and checkpoints hold its weights and optimiser state.
Every other role (reference, teacher, preference model; later critic, opponent) is frozen: loaded
from its source, put on the run's device in the run's dtype, switched to inference, and held the way
the layout holds models (``layout.prepare``: sharded under FSDP) when it runs inside the training
step. Frozen roles are never checkpointed: a resumed run loads them again from their source, and a
copy of the initial policy is rebuilt from the checkpoint's first step (the reference cache keeps
its precomputed values; see ``reference.py``).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import torch

from unigrad.models import is_peft, load_model

INITIAL_POLICY = "policy"   # a role's source: a frozen copy of the policy as it was before training


@dataclass(frozen=True)
class Role:
    name: str                 # "reference", "teacher", "preference", …
    source: str               # a model name or folder (like model.name), or INITIAL_POLICY
    prepared: bool = True     # held as the layout holds models (sharded with the policy), else whole
    head: Literal["lm", "score"] = "lm"   # a causal LM, or a one-output score head (a reward model; models.HEADS)


def preference_role(kind: str, source: str) -> Role:
    """The preference model's role: a judge LM (``kind="judge"``) or a reward model (a sequence-classification
    head, ``kind="reward-model"``) from ``source`` ("policy": a frozen copy of the initial policy). It runs
    outside the training step, in the experience producer, so it is held whole on every process."""
    head = "score" if kind == "reward-model" else "lm"
    return Role("preference", INITIAL_POLICY if source == INITIAL_POLICY else source, prepared=False, head=head)


def load_role(role: Role, policy, layout, device: torch.device, dtype: torch.dtype, trust_remote_code: bool = False):
    """The frozen model of ``role``. A copy of a LoRA policy is the policy itself with its adapters
    switched off by the caller (no second copy of the base weights)."""
    return load_role_and_tokenizer(role, policy, None, layout, device, dtype, trust_remote_code)[0]


def load_role_and_tokenizer(role: Role, policy, tokenizer, layout, device: torch.device, dtype: torch.dtype,
                            trust_remote_code: bool = False):
    """``(frozen model, its tokenizer)`` of ``role``; a copy of the policy has the policy's ``tokenizer``."""
    if role.source == INITIAL_POLICY:
        if role.head != "lm":
            raise ValueError(f"model role {role.name}: a copy of the policy is a language model, not a reward model")
        if is_peft(policy):
            if role.name != "reference":   # only the reference switches the adapters off around its calls
                raise ValueError(f"model role {role.name}: a frozen copy of a LoRA policy is the policy with its "
                                 "adapters off, which only the reference role handles; name the base model instead")
            return layout.prepare(policy), tokenizer
        model = copy.deepcopy(policy)
    else:
        model, tokenizer = load_model(role.source, dtype=dtype, device=device, trust_remote_code=trust_remote_code,
                                      head=role.head)
    model = model.eval().requires_grad_(False)
    return (layout.prepare(model) if role.prepared else model), tokenizer

