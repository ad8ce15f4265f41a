"""Generation split over processes: the gathered rollouts are the concatenation of the shares."""
import torch

from unigrad.models import tiny_random_model, tiny_tokenizer
from unigrad.parallel import Processes
from unigrad.rollout.hf import HFSampler
from unigrad.rollout.sharded import ShardedSampler, concat_rollouts


def test_concatenated_shares_equal_one_greedy_batch():
    tokenizer = tiny_tokenizer()
    sampler = HFSampler(tiny_random_model(seed=0, tokenizer=tokenizer), tokenizer)
    prompts = [list(tokenizer.encode(t)) for t in ("1+1=", "22+3=", "7*8=")]
    whole = sampler.sample(prompts, 2, 6, temperature=0)
    parts = concat_rollouts([sampler.sample(prompts[:2], 2, 6, temperature=0), sampler.sample(prompts[2:], 2, 6, temperature=0)])
    assert parts.completion_ids == whole.completion_ids and parts.prompt_ids == whole.prompt_ids
    assert parts.group.tolist() == whole.group.tolist() == [0, 0, 1, 1, 2, 2]
    torch.testing.assert_close(parts.mask, whole.mask)
    torch.testing.assert_close(parts.logp_policy, whole.logp_policy, atol=1e-5, rtol=1e-5)
    assert parts.finished.tolist() == whole.finished.tolist()


def test_one_process_samples_everything_itself():
    tokenizer = tiny_tokenizer()
    sampler = HFSampler(tiny_random_model(seed=0, tokenizer=tokenizer), tokenizer)
    prompts = [list(tokenizer.encode("3+4="))]
    out = ShardedSampler(sampler, Processes()).sample(prompts, 3, 5, temperature=1.0, seed=7)
    ref = sampler.sample(prompts, 3, 5, temperature=1.0, seed=7)
    assert out.completion_ids == ref.completion_ids
