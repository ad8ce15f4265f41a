"""FILA: Fisher-weighted initialisation of LoRA adapters for unlearning.

Cha et al. 2025, "Towards Robust and Parameter-Efficient Knowledge Unlearning for LLMs" (ICLR), as in
the official code (``measure_importance.py``, ``forget.py``; see shared FORMULAS.md §4):

    F_f[w] = Σ_batches (∂ NLL_mean(forget batch)/∂w)² · n_tok(batch) / Σ n_tok   (empirical Fisher,
             ``unigrad.merge.squared_gradients`` with ``token_mean``; batches of 8)
    F_r[w] = the same on retain batches
    I[w]   = F_f[w] / (1e-5 + F_r[w]);   r_i = sqrt(Σ_j I[i, j])   (row importance of W, out × in)
    U S Vᵀ ≈ diag(r) W   (rank-q SVD, q = LoRA rank);   S ← S / s,  s = lora_alpha / q
    A = (V √S)ᵀ,   B = diag(1/(r + 1e-5)) U √S,   W_base ← W − s·B A

so the adapted model computes exactly the same function at initialisation, while the adapters start
on the directions that matter most for the forget set relative to the retain set.
"""
from __future__ import annotations

import torch

from unigrad.merge import squared_gradients
from unigrad.tokens import Sequence


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
    params = {f"{name}.base_layer.weight": layer.base_layer.weight for name, layer in layers.items()}
    with peft_model.disable_adapter():
        f_forget, f_retain = (squared_gradients(peft_model, examples, pad_id, params, batch_size=8, token_mean=True,
                                                chunk_size=chunk_size) for examples in (forget, retain))
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
