"""KV-cache plumbing: the sampler and the shared-prompt forward use transformers' current cache API (no
FutureWarning, DeprecationWarning or deprecation log line) and reshape caches along the batch."""
import logging
import warnings

import torch

from unigrad.data.packing import collate
from unigrad.logprobs import shared_prompt_logprobs, token_logprobs
from unigrad.models import load_model
from unigrad.rollout.hf import HFSampler
from unigrad.rollout.kv_cache import cache_argument, cached_forward, left_padded, repeat_cache_rows, select_cache_rows
from unigrad.tokens import Sequence


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def test_sampling_and_shared_prompt_forward_use_no_deprecated_transformers_api():
    model, tok = load_model("tiny-random")
    lines, hf_logger = _Lines(), logging.getLogger("transformers")
    hf_logger.addHandler(lines)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)
            warnings.simplefilter("error", DeprecationWarning)
            rollouts = HFSampler(model, tok).sample([[5, 6, 7], [8, 9]], 2, 4, seed=0)
            sequences = [Sequence((5, 6, 7), (8, 9)), Sequence((5, 6, 7), (10,)), Sequence((4,), (3, 2))]
            with torch.no_grad():
                shared = shared_prompt_logprobs(model, sequences, tok.pad_token_id)
                separate = token_logprobs(model, collate(sequences, tok.pad_token_id))
    finally:
        hf_logger.removeHandler(lines)
    assert not [line for line in lines.lines if "deprecat" in line.lower()], lines.lines
    assert len(rollouts.completion_ids) == 4
    torch.testing.assert_close(shared, separate, rtol=0, atol=1e-5)


def test_cached_forward_continues_a_prefill_like_one_forward():
    model, _ = load_model("tiny-random")
    body = model.model
    assert cache_argument(body) in ("cache", "past_key_values")
    ids, att, pos = left_padded([(5, 6, 7), (8,)], 0, "cpu")
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and pos.tolist() == [[0, 1, 2], [0, 0, 0]]
    with torch.no_grad():
        full = body(input_ids=torch.tensor([[5, 6, 7, 9]]), use_cache=False).last_hidden_state[0, -1]
        _, cache = cached_forward(body, input_ids=ids, attention_mask=att, position_ids=pos)
        cache = select_cache_rows(cache, torch.tensor([0]))                  # keep the first prompt
        cache = repeat_cache_rows(cache, 2)                                  # twice
        out, _ = cached_forward(body, cache, input_ids=torch.tensor([[9], [9]]), position_ids=torch.tensor([[3], [3]]),
                                attention_mask=torch.ones(2, 4, dtype=torch.long))
    torch.testing.assert_close(out.last_hidden_state[:, -1], full.expand(2, -1), rtol=0, atol=1e-5)


def test_legacy_tuple_caches_are_reshaped_too():
    layer = (torch.arange(6.0).reshape(3, 2), torch.arange(6.0).reshape(3, 2) + 10)
    repeated = repeat_cache_rows((layer,), 2)
    assert repeated[0][0][:, 0].tolist() == [0, 0, 2, 2, 4, 4]
    selected = select_cache_rows([layer], torch.tensor([2, 0]))
    assert isinstance(selected, list) and selected[0][1][:, 0].tolist() == [14, 10]
