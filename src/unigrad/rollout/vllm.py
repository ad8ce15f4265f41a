"""``VLLMSampler``: the ``Sampler`` protocol over a vLLM engine (GPU), in the trainer's process.

vLLM is imported only when a ``VLLMSampler`` is built; without it the constructor raises
``ImportError("the vLLM sampler needs `pip install vllm` (GPU) ...")``.

Status: written against vLLM's offline API (``LLM``, ``SamplingParams``, ``TokensPrompt``,
``LLM.reset_prefix_cache``) but NOT tested here (no GPU / vLLM in the development environment).

What it returns (compare ``rollout.base``):
- ``logp_policy``: vLLM's log-prob of each sampled token (``SamplingParams(logprobs=0)``). vLLM's V1
  engine returns log-probs of the raw model output by default (``logprobs_mode="raw_logprobs"``),
  i.e. the policy at temperature 1 — the same quantity as ``HFSampler``'s ``logp_policy``, up to
  kernel differences between vLLM and transformers (typically 1e-3..1e-2 in bfloat16; recompute
  with ``policy.token_logprobs`` when the importance ratio must be exact).
- ``logp_temperature`` and ``logp_sample``: equal to ``logp_policy`` when sampling is plain
  (temperature 1, no top-k / top-p); otherwise vLLM does not return them alongside the raw
  log-probs, so they are NaN (on completion tokens) to fail loudly rather than mislead.
- ``entropy``: None. vLLM returns the log-probs of the sampled (and top-k) tokens only, not the full
  next-token distribution, so the per-token policy entropy (``HFSampler`` gives it) is absent and the
  experience metrics have no ``entropy`` with this sampler.
"""
from __future__ import annotations

import math
import os
import tempfile
from typing import Any

import torch

from unigrad.rollout.base import Rollouts, check_sampling_args

_MISSING = ("the vLLM sampler needs `pip install vllm` (GPU); it is not installed here "
            "(use the default HFSampler, which runs anywhere transformers runs)")


class VLLMSampler:
    """Sample with vLLM. ``model`` is a folder / Hub id, or a transformers model (saved to a temporary
    folder first). Extra keyword arguments go to ``vllm.LLM`` (e.g. ``gpu_memory_utilization``,
    ``tensor_parallel_size``, ``dtype``).

    Prefix caching is on, so the n samples of a prompt share its prefill; ``update_weights`` clears
    that cache because its entries were computed with the old weights.
    """

    def __init__(self, model: Any, tokenizer=None, gpu_memory_utilization: float = 0.3,
                 enable_prefix_caching: bool = True, **llm_kwargs):
        try:
            import vllm  # noqa: F401
            from vllm import LLM, SamplingParams
        except ImportError as e:
            raise ImportError(_MISSING) from e
        self._SamplingParams = SamplingParams
        try:
            from vllm.inputs import TokensPrompt
        except ImportError:  # pragma: no cover - older vLLM
            TokensPrompt = None
        self._TokensPrompt = TokensPrompt
        self._tmp = None
        path = model
        if not isinstance(model, (str, os.PathLike)):
            from unigrad.models import save_model
            self._tmp = tempfile.TemporaryDirectory(prefix="unigrad-vllm-")
            path = str(save_model(model, tokenizer, self._tmp.name))
        self.tokenizer = tokenizer
        self.llm = LLM(model=str(path), gpu_memory_utilization=gpu_memory_utilization,
                       enable_prefix_caching=enable_prefix_caching, **llm_kwargs)

    # --------------------------------------------------------------------------------- weights

    def update_weights(self, model) -> None:
        """Copy ``model``'s weights (a transformers model; peft adapters merged) into the engine."""
        state = _state_dict(model)
        target = _engine_model(self.llm)
        if target is not None:
            target.load_weights(state.items())
        elif hasattr(self.llm, "collective_rpc"):  # vLLM V1 with worker processes
            self.llm.collective_rpc(_load_weights_rpc, args=(list(state.items()),))
        else:  # pragma: no cover
            raise RuntimeError("VLLMSampler.update_weights: cannot reach the vLLM model (unknown vLLM version)")
        if hasattr(self.llm, "reset_prefix_cache"):
            self.llm.reset_prefix_cache()

    # -------------------------------------------------------------------------------- sampling

    def sample(self, prompts: list[list[int]], num_generations: int, max_new_tokens: int,
               temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
               seed: int | None = None) -> Rollouts:
        prompts = check_sampling_args(prompts, num_generations, max_new_tokens, temperature, top_p, top_k)
        n = int(num_generations)
        common = dict(temperature=float(temperature), top_p=float(top_p), top_k=int(top_k) if top_k > 0 else -1,
                      max_tokens=int(max_new_tokens), logprobs=0)
        requests, params = [], []
        for i, p in enumerate(prompts):
            prompt = self._TokensPrompt(prompt_token_ids=p) if self._TokensPrompt else {"prompt_token_ids": p}
            if seed is None:
                requests.append(prompt)
                params.append(self._SamplingParams(n=n, **common))
            else:  # one request per sample: n children of one seeded request would repeat the same draw
                for j in range(n):
                    requests.append(prompt)
                    params.append(self._SamplingParams(n=1, seed=int(seed) * 1_000_003 + i * n + j, **common))
        outputs = self.llm.generate(requests, params, use_tqdm=False)

        completions, lps, finished = [], [], []
        for out in outputs:
            for c in out.outputs:
                ids = tuple(int(t) for t in c.token_ids)
                completions.append(ids)
                finished.append(c.finish_reason == "stop")
                lps.append([_sampled_logprob(c.logprobs, t, tok) for t, tok in enumerate(ids)])
        B, T = len(completions), max(len(c) for c in completions)
        logp = torch.zeros(B, T)
        mask = torch.zeros(B, T)
        for r, row in enumerate(lps):
            logp[r, :len(row)] = torch.tensor(row, dtype=torch.float32)
            mask[r, :len(row)] = 1.0
        exact = temperature == 1.0 and top_p == 1.0 and top_k == 0
        other = logp.clone() if exact else torch.where(mask > 0, torch.full_like(logp, math.nan), logp)
        return Rollouts(
            prompt_ids=[tuple(p) for p in prompts for _ in range(n)],
            completion_ids=completions,
            logp_policy=logp, logp_temperature=other, logp_sample=other.clone(), mask=mask,
            group=torch.arange(len(prompts), dtype=torch.long).repeat_interleave(n),
            finished=torch.tensor(finished, dtype=torch.bool),
            num_generations=n,
            sampling=dict(temperature=temperature, top_p=top_p, top_k=top_k, seed=seed, max_new_tokens=max_new_tokens),
        )


def _sampled_logprob(logprobs, t: int, token: int) -> float:
    if logprobs is None or t >= len(logprobs) or logprobs[t] is None:
        return math.nan
    entry = logprobs[t].get(token)
    if entry is None:
        return math.nan
    return float(getattr(entry, "logprob", entry))


def _state_dict(model) -> dict[str, torch.Tensor]:
    try:
        from peft import PeftModel
        if isinstance(model, PeftModel):
            import copy
            model = copy.deepcopy(model).merge_and_unload()
    except ImportError:  # pragma: no cover
        pass
    return {k: v.detach() for k, v in model.state_dict().items()}


def _engine_model(llm):
    """The engine's torch model when it lives in this process (vLLM V0, or V1 without multiprocessing)."""
    paths = (
        ("llm_engine", "model_executor", "driver_worker", "model_runner", "model"),            # V0
        ("llm_engine", "model_executor", "driver_worker", "worker", "model_runner", "model"),  # V1, in-process
    )
    for path in paths:
        obj = llm
        for name in path:
            obj = getattr(obj, name, None)
            if obj is None:
                break
        if obj is not None and hasattr(obj, "load_weights"):
            return obj
    return None


def _load_weights_rpc(worker, weights):  # pragma: no cover - runs inside vLLM workers
    worker.model_runner.model.load_weights(weights)


__all__ = ["VLLMSampler"]
