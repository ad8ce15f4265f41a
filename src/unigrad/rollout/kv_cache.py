"""KV-cache plumbing for prefill-then-continue forwards: the sampler's decode loop and the shared-prompt forward.

``left_padded`` lays prompts out so every prompt's last token sits in the last column; ``cached_forward``
runs a transformer body with a KV cache under the name the installed transformers expects (``cache``
since the ``past_key_values`` argument was deprecated, ``past_key_values`` before) and returns the
body's output with the cache it returned; ``repeat_cache_rows`` / ``select_cache_rows`` reshape a cache
along the batch (a ``Cache`` object's own methods, or the legacy tuple-of-tensors format).
"""
from __future__ import annotations

import dataclasses
import inspect

import torch
from torch import Tensor

_CACHE_ARGUMENT: dict[type, str] = {}


def left_padded(prompts, pad_id: int, device) -> tuple[Tensor, Tensor, Tensor]:
    """Prompts as one left-padded batch, ready for a prefill whose last column is every prompt's last
    token: input ids, attention mask (0 on padding) and position ids counting real tokens only."""
    P = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), P), int(pad_id), dtype=torch.long)
    att = torch.zeros((len(prompts), P), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, P - len(prompt):] = torch.tensor(list(prompt), dtype=torch.long)
        att[row, P - len(prompt):] = 1
    ids, att = ids.to(device), att.to(device)
    return ids, att, (att.cumsum(-1) - 1).clamp(min=0)


def cache_argument(body) -> str:
    """The keyword under which ``body.forward`` takes a KV cache: ``cache`` (current transformers) or
    ``past_key_values`` (older releases, where ``cache`` does not exist)."""
    kind = type(body)
    if kind not in _CACHE_ARGUMENT:
        try:
            names = inspect.signature(body.forward).parameters
        except (TypeError, ValueError):  # pragma: no cover - a forward without a signature
            names = {}
        _CACHE_ARGUMENT[kind] = "cache" if "cache" in names else "past_key_values"
    return _CACHE_ARGUMENT[kind]


def output_cache(out):
    """The KV cache a body returned (field ``cache``, or ``past_key_values`` in older transformers)."""
    names = {f.name for f in dataclasses.fields(out)} if dataclasses.is_dataclass(out) else set()
    return out.cache if "cache" in names else out.past_key_values


def cached_forward(body, cache=None, **inputs):
    """``body(**inputs, use_cache=True)`` continuing from ``cache`` (None: a prefill); returns
    ``(output, cache)`` with the cache the body filled."""
    if cache is not None:
        inputs[cache_argument(body)] = cache
    out = body(**inputs, use_cache=True)
    return out, output_cache(out)


def repeat_cache_rows(cache, n: int):
    """A KV cache with each batch row repeated ``n`` times (row i → rows i·n … i·n + n − 1)."""
    return _rows(cache, "batch_repeat_interleave", n, lambda t: t.repeat_interleave(n, dim=0))


def select_cache_rows(cache, index: Tensor):
    """A KV cache whose row i is row ``index[i]`` of ``cache`` (rows may repeat)."""
    return _rows(cache, "batch_select_indices", index, lambda t: t[index])


def _rows(cache, method: str, argument, legacy):
    """``cache.method(argument)`` in place on a ``Cache`` object; ``legacy`` on every tensor of a tuple cache."""
    if hasattr(cache, method):
        getattr(cache, method)(argument)
        return cache
    return _map_legacy(cache, legacy)


def _map_legacy(cache, fn):
    if isinstance(cache, (tuple, list)):
        return type(cache)(_map_legacy(c, fn) for c in cache)
    if isinstance(cache, Tensor):
        return fn(cache)
    raise TypeError(f"cannot repeat/select the rows of a {type(cache).__name__} KV cache")


__all__ = ["cache_argument", "cached_forward", "left_padded", "output_cache", "repeat_cache_rows",
           "select_cache_rows"]
