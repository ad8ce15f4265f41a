"""``HFSampler``: batched sampling from a transformers causal LM with its own decode loop.

Why our own loop rather than ``model.generate``: each step's logits are at hand, so the sampled
token's log-probs (``logp_policy`` at temperature 1, ``logp_temperature``, ``logp_sample``; see
``rollout.base``) come out of the same forward passes, with no second pass over the completions.

How it runs, per chunk of prompts:
1. prefill: the prompts, left-padded (attention mask 0 on padding, position ids counting real
   tokens from 0), go through the model once with the KV cache on;
2. for ``num_generations = n > 1`` the cache and the last hidden state are repeated n times along the
   batch (``rollout.kv_cache``), so each prompt is prefilled once for its whole group;
3. decode: one token per step for every live row — temperature, top-k, top-p, stop on an
   end-of-sequence token, at most ``max_new_tokens``; rows that stopped leave the batch
   (``Cache.batch_select_indices``).

The logits are computed like ``logprobs.token_logprobs`` does (the model's body, its output layer and
the architecture's logit transform, in float32 for half-precision models), so ``logp_policy`` equals
``token_logprobs(model, collate(rollouts.sequences()))`` up to floating-point noise.

The full softmax at each decode step is at hand too, so ``Rollouts.entropy`` carries the entropy
H_t = −Σ_v p(v) log p(v) of the distribution ``logp_policy`` is read from (temperature 1, before top-k /
top-p; with ``mix_with``, the mixture's): one more elementwise pass over the step's logits, no forward pass.
"""
from __future__ import annotations

import torch
from torch import Tensor

from unigrad.logprobs.readout import body_and_head, compute_dtype, logit_transform
from unigrad.rollout.base import Rollouts, check_sampling_args
from unigrad.rollout.kv_cache import cached_forward, left_padded, repeat_cache_rows, select_cache_rows


class HFSampler:
    """Sample from ``model`` (a transformers causal LM, peft-wrapped or not) on its own device.

    stop_token_ids: tokens that end a completion; default: the tokenizer's EOS plus the model's
      ``generation_config.eos_token_id`` (one id or a list).
    max_batch_size: at most this many rows (prompts × samples) decode together; prompts are split
      into chunks accordingly (default: all at once).
    share_prefill: prefill each prompt once and repeat its KV cache for its n samples (default);
      False prefills every row separately (same results, more compute; kept for testing).
    mix_with, beta: sample from the geometric mixture of ``model`` and the frozen model ``mix_with``
      (Munos et al. 2024, "Nash Learning from Human Feedback", §7), token by token:

          log π^β(y_t | y_<t) = (1 − β) log π(y_t | y_<t) + β log μ(y_t | y_<t) − log Z_t,

      both models' logits at every decode step (each with its own KV cache), mixed in log space and
      renormalised; temperature, top-k and top-p then apply to the mixture, and ``logp_policy`` is the
      mixture's log-prob at temperature 1. β = 0 is the policy itself, β = 1 the other model.
    """

    def __init__(self, model, tokenizer, stop_token_ids: list[int] | None = None,
                 max_batch_size: int | None = None, share_prefill: bool = True, mix_with=None, beta: float = 0.0):
        if mix_with is not None and not 0.0 <= float(beta) <= 1.0:
            raise ValueError(f"the geometric mixture's beta must be in [0, 1], got {beta}")
        self.mix_with, self.beta = mix_with, float(beta)
        self.model = model
        self.tokenizer = tokenizer
        if stop_token_ids is None:
            stop_token_ids = _default_stop_ids(model, tokenizer)
        self.stop_token_ids = sorted({int(t) for t in stop_token_ids})
        if not self.stop_token_ids:
            raise ValueError("HFSampler needs at least one stop token id (the tokenizer has no eos_token_id)")
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_token_id = int(pad) if pad is not None else self.stop_token_ids[0]
        if max_batch_size is not None and max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.max_batch_size = max_batch_size
        self.share_prefill = bool(share_prefill)

    def update_weights(self, model) -> None:
        """Use ``model`` from now on (the sampler shares the trainer's weights; no copy is made)."""
        self.model = model

    def sample(self, prompts: list[list[int]], num_generations: int, max_new_tokens: int,
               temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
               seed: int | None = None) -> Rollouts:
        """P prompts (token ids) → P × ``num_generations`` completions; see ``rollout.base``."""
        prompts = check_sampling_args(prompts, num_generations, max_new_tokens, temperature, top_p, top_k)
        n = int(num_generations)
        param = next(self.model.parameters())
        gen = torch.Generator(device=param.device)
        gen.manual_seed(int(seed) if seed is not None else int(torch.randint(0, 2**62, (1,)).item()))
        per_chunk = len(prompts) if self.max_batch_size is None else max(1, self.max_batch_size // n)

        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                parts = [self._chunk(prompts[i:i + per_chunk], n, int(max_new_tokens), float(temperature),
                                     float(top_p), int(top_k), gen)
                         for i in range(0, len(prompts), per_chunk)]
        finally:
            self.model.train(was_training)

        completions = [c for part in parts for c in part[0]]
        finished = torch.cat([part[2] for part in parts])
        B, T = len(completions), max(len(c) for c in completions)
        logps = []
        for k in range(4):                       # logp_policy, logp_temperature, logp_sample, entropy
            out = torch.zeros(B, T, dtype=torch.float32)
            row = 0
            for part in parts:
                lp = part[1][k]
                out[row:row + lp.shape[0], :lp.shape[1]] = lp[:, :T].float().cpu()
                row += lp.shape[0]
            logps.append(out)
        mask = torch.zeros(B, T, dtype=torch.float32)
        for r, c in enumerate(completions):
            mask[r, :len(c)] = 1.0
        logps = [lp * mask for lp in logps]
        return Rollouts(
            prompt_ids=[tuple(p) for p in prompts for _ in range(n)],
            completion_ids=completions,
            logp_policy=logps[0], logp_temperature=logps[1], logp_sample=logps[2],
            mask=mask,
            group=torch.arange(len(prompts), dtype=torch.long).repeat_interleave(n),
            finished=finished.cpu(),
            num_generations=n,
            sampling=dict(temperature=temperature, top_p=top_p, top_k=top_k, seed=seed, max_new_tokens=max_new_tokens),
            entropy=logps[3],
        )

    # ------------------------------------------------------------------------------------ decode

    def _readers(self) -> list[tuple]:
        """(body, head, logit transform, weight in the log-space mixture) of each model sampled from."""
        models = [(self.model, 1.0)] if self.mix_with is None else [(self.model, 1.0 - self.beta),
                                                                     (self.mix_with, self.beta)]
        out = []
        for model, weight in models:
            body, head, config = body_and_head(model)
            out.append((body, head, logit_transform(config), weight))
        return out

    def _chunk(self, prompts: list[list[int]], n: int, max_new: int, temperature: float, top_p: float,
               top_k: int, gen: torch.Generator):
        readers = self._readers()
        dev = next(self.model.parameters()).device
        dtype = compute_dtype(self.model)
        stop = torch.tensor(self.stop_token_ids, device=dev)

        P = len(prompts)
        ids, att, pos = left_padded(prompts, self.pad_token_id, dev)
        share = self.share_prefill and n > 1
        if not share and n > 1:
            ids, att, pos = (x.repeat_interleave(n, dim=0) for x in (ids, att, pos))

        caches, hs = [], []
        for body, *_ in readers:
            out, cache = cached_forward(body, input_ids=ids, attention_mask=att, position_ids=pos)
            caches.append(repeat_cache_rows(cache, n) if share else cache)
            hs.append(out.last_hidden_state[:, -1].repeat_interleave(n, dim=0) if share else out.last_hidden_state[:, -1])
        if share:
            att, pos = (x.repeat_interleave(n, dim=0) for x in (att, pos))
        B = P * n
        next_pos = pos[:, -1] + 1                                     # [b] position of the next token
        active = torch.arange(B, device=dev)                          # row index of each live row
        tokens = torch.full((B, max_new), -1, dtype=torch.long, device=dev)
        lps = torch.zeros((4, B, max_new), dtype=dtype, device=dev)
        finished = torch.zeros(B, dtype=torch.bool, device=dev)

        for step in range(max_new):
            z = _mixed_logits([(transform(head(h)).to(dtype), weight)
                               for h, (_, head, transform, weight) in zip(hs, readers)])     # [b, V]
            tok, lp = _pick(z, temperature, top_k, top_p, gen)
            tokens[active, step] = tok
            lps[:, active, step] = lp
            is_stop = torch.isin(tok, stop)
            finished[active[is_stop]] = True
            if step == max_new - 1 or bool(is_stop.all()):
                break
            if bool(is_stop.any()):
                keep = (~is_stop).nonzero().squeeze(1)
                caches = [select_cache_rows(cache, keep) for cache in caches]
                att, next_pos, tok, active = att[keep], next_pos[keep], tok[keep], active[keep]
            att = torch.cat([att, att.new_ones(att.shape[0], 1)], dim=1)
            for j, (body, *_) in enumerate(readers):
                out, caches[j] = cached_forward(body, caches[j], input_ids=tok[:, None], attention_mask=att,
                                                position_ids=next_pos[:, None])
                hs[j] = out.last_hidden_state[:, -1]
            next_pos = next_pos + 1

        lengths = (tokens >= 0).sum(1).tolist()
        completions = [tuple(tokens[r, :lengths[r]].tolist()) for r in range(B)]
        return completions, [lps[k] for k in range(4)], finished


def _mixed_logits(weighted: list[tuple[Tensor, float]]) -> Tensor:
    """Σ_j w_j log softmax(z_j): the log-space mixture of several models' next-token logits (one
    model: its logits unchanged); the sampler's log-softmax renormalises it."""
    if len(weighted) == 1:
        return weighted[0][0]
    return sum(weight * torch.log_softmax(z.float(), dim=-1) for z, weight in weighted).to(weighted[0][0].dtype)


def _pick(z: Tensor, temperature: float, top_k: int, top_p: float, gen: torch.Generator):
    """Choose one token per row from logits ``z`` [b, V]; returns (token [b], per-row values [4, b]).

    The values are the log-probs (policy at T=1, policy at T, the truncated sampling distribution q)
    and the entropy −Σ p log p of the policy at T=1.
    """
    logp1 = torch.log_softmax(z, dim=-1)
    entropy = torch.special.entr(logp1.exp()).sum(-1)       # entr(0) = 0: tokens of probability 0 add nothing
    if temperature == 0:
        tok = z.argmax(dim=-1)
        lp1 = logp1.gather(-1, tok[:, None]).squeeze(-1)
        zero = torch.zeros_like(lp1)
        return tok, torch.stack([lp1, zero, zero, entropy])
    zt = z / temperature
    logpt = torch.log_softmax(zt, dim=-1) if temperature != 1.0 else logp1
    masked = zt
    if top_k > 0 and top_k < zt.shape[-1]:
        kth = torch.topk(zt, top_k, dim=-1).values[:, -1:]
        masked = masked.masked_fill(zt < kth, float("-inf"))
    if top_p < 1.0:
        sorted_z, order = torch.sort(masked, dim=-1, descending=True)
        probs = torch.softmax(sorted_z, dim=-1)
        mass_before = probs.cumsum(-1) - probs
        drop_sorted = mass_before >= top_p                   # keep the smallest prefix reaching top_p
        drop_sorted[:, 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        masked = masked.masked_fill(drop, float("-inf"))
    logq = torch.log_softmax(masked, dim=-1) if masked is not zt else logpt
    tok = _inverse_cdf_sample(logq.exp(), gen)
    idx = tok[:, None]
    return tok, torch.stack([logp1.gather(-1, idx).squeeze(-1), logpt.gather(-1, idx).squeeze(-1),
                             logq.gather(-1, idx).squeeze(-1), entropy])


def _inverse_cdf_sample(probs: Tensor, gen: torch.Generator) -> Tensor:
    """One token per row of ``probs`` [b, V], drawn by inverting the row's CDF with one uniform number:
    the first token whose cumulative mass exceeds u·total. The same distribution as
    ``torch.multinomial(probs, 1)``, whose CPU kernel draws V exponentials per row (on this machine
    ~15% of a GRPO rollout's time); zero-probability tokens are never drawn (``right=True``)."""
    cdf = probs.double().cumsum(-1)
    u = torch.rand(probs.shape[0], 1, generator=gen, device=probs.device, dtype=torch.float64) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).clamp(max=probs.shape[-1] - 1).squeeze(-1)


def _default_stop_ids(model, tokenizer) -> list[int]:
    ids = []
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is not None:
        ids.append(int(eos))
    gc = getattr(model, "generation_config", None)
    g_eos = getattr(gc, "eos_token_id", None) if gc is not None else None
    if isinstance(g_eos, int):
        ids.append(g_eos)
    elif isinstance(g_eos, (list, tuple)):
        ids.extend(int(t) for t in g_eos)
    return ids


__all__ = ["HFSampler"]


def geometric_mixture(sampler, reference, beta: float):
    """A sampler like ``sampler`` (the run's) that draws from the geometric mixture π^(1−β) μ^β of its
    policy and the frozen model ``reference`` (``HFSampler``'s ``mix_with``); the same processes'
    sharding. Only the transformers sampler can: it has both models' logits at every decode step."""
    inner = getattr(sampler, "inner", sampler)
    if not isinstance(inner, HFSampler):
        from unigrad.config import ConfigError
        raise ConfigError(f"rollout.sampler={type(inner).__name__}: sampling from the geometric mixture of the policy "
                          "and the reference needs both models' logits at every decode step, which vLLM's engine "
                          "does not expose; use rollout.sampler: hf")
    mixed = HFSampler(inner.model, inner.tokenizer, inner.stop_token_ids, inner.max_batch_size, inner.share_prefill,
                      mix_with=reference, beta=beta)
    if inner is sampler:
        return mixed
    return type(sampler)(mixed, sampler.procs)
