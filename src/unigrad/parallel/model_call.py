"""``ModelCall``: the root module every layout wraps, whose forward is any function of the model.

``call(fn, *args)`` = ``fn(model, *args)``, run as this module's forward. The log-prob functions call
the model's body and its LM head separately; run inside one forward, FSDP's root hooks gather the
embedding, final norm and (tied) LM head around the whole computation, and DeepSpeed's engine wraps
the same module.
"""
from __future__ import annotations

import torch


class ModelCall(torch.nn.Module):
    """``call(fn, *args, **kwargs)`` = ``fn(call.model, *args, **kwargs)`` as this module's forward."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, fn, *args, **kwargs):
        return fn(self.model, *args, **kwargs)


def with_optimizer(call: ModelCall, make_optimizer):
    """``(call, make_optimizer(trainable parameters of call.model))``."""
    return call, make_optimizer([p for p in call.model.parameters() if p.requires_grad])
