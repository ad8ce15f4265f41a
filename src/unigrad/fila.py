"""FILA: Fisher-weighted initialisation of LoRA adapters for unlearning.

Cha et al. 2025, "Towards Robust and Parameter-Efficient Knowledge Unlearning for LLMs" (ICLR), as in
the official code (``measure_importance.py``, ``forget.py``; see shared FORMULAS.md §4):

    F_f[w] = Σ_batches (∂ NLL_mean(forget batch)/∂w)² · n_tok(batch) / Σ n_tok   (empirical Fisher)
    F_r[w] = the same on retain batches
    I[w]   = F_f[w] / (1e-5 + F_r[w]);   r_i = sqrt(Σ_j I[i, j])   (row importance of W, out × in)
    U S Vᵀ ≈ diag(r) W   (rank-q SVD, q = LoRA rank);   S ← S / s,  s = lora_alpha / q
    A = (V √S)ᵀ,   B = diag(1/(r + 1e-5)) U √S,   W_base ← W − s·B A

so the adapted model computes exactly the same function at initialisation, while the adapters start
on the directions that matter most for the forget set relative to the retain set.
"""
from __future__ import annotations

import torch

from unigrad.policy import collate, token_logprobs
from unigrad.tokens import Sequence


def fisher_diagonal(model, sequences: list[Sequence], pad_id: int, names: set[str], batch_size: int = 8,
                    chunk_size: int = 1024) -> dict[str, torch.Tensor]:
    """Σ_batches (∂ token-mean NLL / ∂w)² · n_tok / Σ n_tok for every parameter in ``names``."""
    params = {name: p for name, p in model.named_parameters() if name in names}
    was = {name: p.requires_grad for name, p in params.items()}
    for p in params.values():
        p.requires_grad_(True)
    fisher = {name: torch.zeros_like(p) for name, p in params.items()}
    total = 0
    for start in range(0, len(sequences), batch_size):
        tb = collate(sequences[start:start + batch_size], pad_id)
        mask = tb.completion_mask
        n_tokens = int(mask.sum())
        nll = -(token_logprobs(model, tb, chunk_size) * mask).sum() / max(n_tokens, 1)
        grads = torch.autograd.grad(nll, list(params.values()), allow_unused=True)
        for (name, _), grad in zip(params.items(), grads):
            if grad is not None:
                fisher[name] += grad.detach() ** 2 * n_tokens
        total += n_tokens
    for name, p in params.items():
        p.requires_grad_(was[name])
    return {name: value / max(total, 1) for name, value in fisher.items()}


def _lora_layers(peft_model):
    for name, module in peft_model.named_modules():
        if hasattr(module, "lora_A") and hasattr(module, "base_layer") and "default" in getattr(module, "lora_A", {}):
            yield name, module


def fila_init(peft_model, forget: list[Sequence], retain: list[Sequence], pad_id: int, eps: float = 1e-5,
              chunk_size: int = 1024) -> None:
    """Initialise every LoRA adapter of ``peft_model`` (adapter ``default``) with FILA, in place."""
    layers = dict(_lora_layers(peft_model))
    if not layers:
        raise ValueError("FILA needs a peft LoRA model (set model.lora)")
    if not forget or not retain:
        raise ValueError("FILA needs forget and retain examples (data.format: forget)")
    names = {f"{name}.base_layer.weight" for name in layers}
    with peft_model.disable_adapter():
        f_forget = fisher_diagonal(peft_model, forget, pad_id, names, chunk_size=chunk_size)
        f_retain = fisher_diagonal(peft_model, retain, pad_id, names, chunk_size=chunk_size)
    with torch.no_grad():
        for name, layer in layers.items():
            key = f"{name}.base_layer.weight"
            weight = layer.base_layer.weight
            importance = f_forget[key] / (eps + f_retain[key])
            rows = importance.sum(dim=1).sqrt()                         # r_i, [out]
            rank = layer.lora_A["default"].weight.shape[0]
            scaling = layer.scaling["default"]
            u, s, v = torch.svd_lowrank(rows[:, None] * weight.float(), q=rank)
            s = s / scaling
            a = (v * s.sqrt()).T                                        # [rank, in]
            b = (u * s.sqrt()) / (rows[:, None] + eps)                  # [out, rank]
            layer.lora_A["default"].weight.copy_(a.to(weight.dtype))
            layer.lora_B["default"].weight.copy_(b.to(weight.dtype))
            weight.sub_((scaling * b @ a).to(weight.dtype))
