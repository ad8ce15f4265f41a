"""Merging models that share an architecture: plain parameter averaging and Fisher-weighted averaging.

Fisher merging (Matena & Raffel 2022, "Merging Models with Fisher-Weighted Averaging", NeurIPS;
eq. 2-3; official code mmatena/model_merging, ``merging.py`` / ``fisher.py``). Confidence H for the
merge rule (paper + code), M for the language-model Fisher (see ``diagonal_fisher``). Per parameter j:

    θ*_j = Σ_i λ_i F_i,j θ_i,j / Σ_i λ_i F_i,j

with F_i the diagonal Fisher of model i and λ_i merging weights (default: equal). Plain averaging is
the same with every F_i,j = 1. Two details from the official code: a floor, F ← max(F, ε)
(``fisher_floor = 1e-6`` there; here ``eps``, applied to every model, so a parameter no model's
Fisher sees becomes the plain average), and an optional normalisation λ_i ← λ_i / ‖F_i‖₂ (the L2 norm
over all parameters; ``normalize_fishers``, on by default there, off here, because eq. 3 of the paper
has no such factor). The official code's ``favor_target_model`` (floor on the first model only) is
not reproduced.

The Fisher here is diagonal, over the log-likelihood of a whole completion:

    F_j = (1/N) Σ_n (∂/∂θ_j log p_θ(y_n | x_n))²,   log p_θ(y|x) = Σ_t log π_θ(y_t | x, y_<t)

``labels="empirical"``: y_n is the dataset's completion (the *empirical* Fisher; cheap and the usual
choice for language models). ``labels="sampled"``: y_n ~ p_θ(·|x_n) is sampled from the model, one
completion per prompt, which is an unbiased one-sample estimate of the true Fisher
E_x E_{y~p_θ}[(∇ log p_θ(y|x))²] that the paper defines (eq. 2; the official code computes that
expectation exactly over the classes of a classifier, which is not possible for sequences).
"""
from __future__ import annotations

import copy
import math
from typing import Any, Iterable, Sequence as _Seq

import torch
from torch import Tensor

from unigrad.tokens import Sequence

Fisher = dict[str, Tensor]


# ------------------------------------------------------------------------------------- helpers

def _named_float_params(model) -> dict[str, Tensor]:
    return {n: p for n, p in model.named_parameters() if p.is_floating_point()}


def _check_same(models: _Seq[Any]) -> list[dict[str, Tensor]]:
    if not models:
        raise ValueError("merging needs at least one model")
    params = [_named_float_params(m) for m in models]
    names = set(params[0])
    for i, p in enumerate(params[1:], start=1):
        if set(p) != names:
            diff = sorted(names ^ set(p))[:3]
            raise ValueError(f"model {i} has different parameters from model 0 (e.g. {', '.join(diff)}); "
                             "only models of one architecture can be merged")
        for n in names:
            if p[n].shape != params[0][n].shape:
                raise ValueError(f"parameter {n}: shape {tuple(p[n].shape)} in model {i} but "
                                 f"{tuple(params[0][n].shape)} in model 0")
    return params


def _weights(weights: _Seq[float] | None, n: int) -> list[float]:
    if weights is None:
        return [1.0 / n] * n
    if len(weights) != n:
        raise ValueError(f"got {len(weights)} merging weights for {n} models")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"merging weights must be >= 0 with a positive sum, got {list(weights)}")
    return [float(w) for w in weights]


# ---------------------------------------------------------------------------------------- merge

@torch.no_grad()
def average_merge(models: _Seq[Any], weights: _Seq[float] | None = None):
    """A new model (a copy of ``models[0]``) whose parameters are Σ_i w_i θ_i / Σ_i w_i (default: equal w)."""
    params = _check_same(models)
    w = _weights(weights, len(models))
    merged = copy.deepcopy(models[0])
    for name, p in _named_float_params(merged).items():
        acc = sum(wi * ps[name].detach().to(torch.float64) for wi, ps in zip(w, params))
        p.copy_((acc / sum(w)).to(p.dtype))
    return merged


@torch.no_grad()
def fisher_merge(models: _Seq[Any], fishers: _Seq[Fisher], eps: float = 1e-6, weights: _Seq[float] | None = None,
                 normalize: bool = False):
    """A new model (a copy of ``models[0]``) with θ*_j = Σ_i λ_i F_i,j θ_i,j / Σ_i λ_i F_i,j.

    ``fishers[i]`` maps parameter names of ``models[i]`` (``named_parameters``) to diagonal Fisher
    tensors of the same shape (``diagonal_fisher``); a missing name counts as Fisher 0 (then the
    floor ``eps`` decides). ``eps`` > 0: F ← max(F, eps). ``normalize``: λ_i ← λ_i / ‖F_i‖₂
    (the official code's ``normalize_fishers``).
    """
    if len(fishers) != len(models):
        raise ValueError(f"got {len(fishers)} Fishers for {len(models)} models")
    if eps <= 0:
        raise ValueError(f"eps must be > 0 (it keeps Σ F away from 0), got {eps}")
    params = _check_same(models)
    lam = _weights(weights, len(models))
    if normalize:
        norms = [math.sqrt(sum(float((f.double() ** 2).sum()) for f in fisher.values())) for fisher in fishers]
        if any(n == 0 for n in norms):
            raise ValueError("cannot normalise an all-zero Fisher")
        lam = [l / n for l, n in zip(lam, norms)]
    merged = copy.deepcopy(models[0])
    for name, p in _named_float_params(merged).items():
        num = torch.zeros(p.shape, dtype=torch.float64, device=p.device)
        den = torch.zeros(p.shape, dtype=torch.float64, device=p.device)
        for li, ps, fisher in zip(lam, params, fishers):
            f = fisher.get(name)
            f = torch.zeros(p.shape, dtype=torch.float64, device=p.device) if f is None else f.to(p.device, torch.float64)
            if f.shape != p.shape:
                raise ValueError(f"Fisher of {name} has shape {tuple(f.shape)}, the parameter {tuple(p.shape)}")
            f = li * f.clamp_min(eps)
            num += f * ps[name].detach().to(p.device, torch.float64)
            den += f
        p.copy_((num / den).to(p.dtype))
    return merged


# --------------------------------------------------------------------------------------- fisher

def _sample_completion(model, tokenizer, seq: Sequence, max_new_tokens: int, generator_seed: int) -> tuple[int, ...]:
    ids = torch.tensor([seq.prompt_ids], dtype=torch.long, device=next(model.parameters()).device)
    torch.manual_seed(generator_seed)
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, top_k=0, top_p=1.0,
                             temperature=1.0, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id)
    new = out[0, ids.shape[1]:].tolist()
    eos = tokenizer.eos_token_id
    if eos is not None and eos in new:
        new = new[: new.index(eos) + 1]
    return tuple(int(t) for t in new) or ((int(eos),) if eos is not None else (int(seq.completion_ids[0]),))


def squared_gradients(model, sequences: _Seq[Sequence], pad_id: int, params: dict[str, Tensor],
                      batch_size: int = 1, token_mean: bool = False, chunk_size: int = 1024) -> Fisher:
    """The diagonal Fisher of ``params`` (float32) from batches b of ``batch_size`` sequences:

        F = Σ_b w_b (∂L_b/∂θ)² / Σ_b w_b,   L_b = Σ_{n∈b} log p_θ(y_n | x_n), w_b = 1            (default)
                                            L_b = token-mean NLL of b,     w_b = n_tok(b)   (``token_mean``)

    Batches of one sequence and the default give the per-example Fisher of ``diagonal_fisher``; the
    token-mean form is FILA's (``unigrad.fila``). ``params`` get ``requires_grad`` for the passes and
    are left as they were; the model's mode is not changed."""
    from unigrad.data.packing import collate
    from unigrad.logprobs import token_logprobs

    was = {name: p.requires_grad for name, p in params.items()}
    for p in params.values():
        p.requires_grad_(True)
    fisher = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in params.items()}
    total = 0
    try:
        for start in range(0, len(sequences), batch_size):
            tb = collate(list(sequences[start:start + batch_size]), pad_id)
            mask = tb.completion_mask
            logp = token_logprobs(model, tb, chunk_size=chunk_size)        # 0 off the completion tokens
            n_tokens = int(mask.sum())
            loss, weight = (-logp.sum() / max(n_tokens, 1), n_tokens) if token_mean else (logp.sum(), 1)
            grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
            for name, grad in zip(params, grads):
                if grad is not None:
                    fisher[name] += grad.detach().float() ** 2 * weight
            total += weight
    finally:
        for name, p in params.items():
            p.requires_grad_(was[name])
    return {name: value / max(total, 1) for name, value in fisher.items()}


def diagonal_fisher(model, tokenizer, sequences: Iterable[Sequence], labels: str = "empirical",
                    max_examples: int | None = None, max_new_tokens: int | None = None, seed: int = 0,
                    chunk_size: int = 1024) -> Fisher:
    """Diagonal Fisher ``{name: F}`` of ``model``: the mean over examples of the squared gradient of
    the completion's log-likelihood log p_θ(y|x) (a sum over its tokens), one backward pass per example
    (``squared_gradients`` with batches of one).

    ``labels="empirical"`` uses each Sequence's completion; ``"sampled"`` samples one completion per
    prompt from the model (at most ``max_new_tokens``, default: the dataset completion's length).
    Only parameters with ``requires_grad`` get a Fisher. The model is left in the mode it was in.
    """
    if labels not in ("empirical", "sampled"):
        raise ValueError(f'labels must be "empirical" or "sampled", got {labels!r}')
    seqs = list(sequences)[:max_examples] if max_examples is not None else list(sequences)
    if not seqs:
        raise ValueError("diagonal_fisher needs at least one sequence")
    params = {n: p for n, p in model.named_parameters() if p.requires_grad and p.is_floating_point()}
    if not params:
        raise ValueError("the model has no trainable floating-point parameters")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    was_training = model.training
    model.eval()
    try:
        if labels == "sampled":
            seqs = [Sequence(seq.prompt_ids, _sample_completion(model, tokenizer, seq,
                                                                max_new_tokens or max(len(seq.completion_ids), 1), seed + k),
                             seq.group, seq.sign) for k, seq in enumerate(seqs)]
        return squared_gradients(model, seqs, pad, params, batch_size=1, chunk_size=chunk_size)
    finally:
        model.train(was_training)


# ------------------------------------------------------------------------------------------ CLI

def add_merge_command(commands) -> None:
    """``unigrad merge``: registered on the CLI's sub-command parsers."""
    p = commands.add_parser("merge", help="merge models of one architecture (Fisher-weighted or plain average)")
    p.add_argument("--method", choices=("fisher", "average"), default="fisher")
    p.add_argument("--models", nargs="+", required=True, help="model names or folders (the first gives the tokenizer)")
    p.add_argument("--data", nargs="+", help="fisher: one dataset per model, for its Fisher")
    p.add_argument("--format", default="sft", help="format of --data (sft, pairs, forget, scored)")
    p.add_argument("--out", required=True, help="folder for the merged model")
    p.add_argument("--weights", nargs="+", type=float, help="merging weights λ_i (default: equal)")
    p.add_argument("--eps", type=float, default=1e-6, help="Fisher floor (default 1e-6)")
    p.add_argument("--normalize", action="store_true", help="divide each Fisher by its L2 norm first")
    p.add_argument("--labels", choices=("empirical", "sampled"), default="empirical")
    p.add_argument("--max-examples", type=int, default=None, help="Fisher from at most this many examples per model")
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(handler=run_merge_command)


def run_merge_command(args) -> int:
    from unigrad.config import ConfigError
    from unigrad.data import load_dataset_sequences
    from unigrad.models import load_model, save_model

    if args.method == "fisher" and (not args.data or len(args.data) != len(args.models)):
        raise ConfigError(f"merge --method fisher needs one --data file per model ({len(args.models)} models, "
                          f"{len(args.data or [])} data files)")
    loaded = [load_model(name) for name in args.models]
    models = [m for m, _ in loaded]
    try:
        if args.method == "average":
            merged = average_merge(models, args.weights)
        else:
            fishers = []
            for (model, tok), path in zip(loaded, args.data):
                seqs = load_dataset_sequences(path, args.format, tok, args.max_length, truncation=True,
                                              limit=args.max_examples)
                fishers.append(diagonal_fisher(model, tok, seqs, labels=args.labels))
            merged = fisher_merge(models, fishers, eps=args.eps, weights=args.weights, normalize=args.normalize)
    except ValueError as e:
        if type(e) is not ValueError:
            raise
        raise ConfigError(f"merge: {e}") from None
    out = save_model(merged, loaded[0][1], args.out)
    print(f"merged {len(models)} models ({args.method}) into {out}")
    return 0


__all__ = ["average_merge", "fisher_merge", "diagonal_fisher", "squared_gradients", "add_merge_command", "run_merge_command"]
