"""Sampling from the geometric mixture π^(1−β) μ^β token by token (Munos et al. 2024, §7): the sampler's
log-probs are the mixture's, written here from its definition — both models' next-token distributions
at each prefix, multiplied with exponents 1−β and β and renormalised — and β = 0 / β = 1 are the two
models themselves; vLLM refuses it with the reason."""
import pytest
import torch

from unigrad.config import ConfigError
from unigrad.models import tiny_random_model, tiny_tokenizer
from unigrad.rollout.hf import HFSampler, geometric_mixture

PROMPTS = [[5, 9, 12, 30], [7, 8]]


def _models():
    tok = tiny_tokenizer()
    return tiny_random_model(seed=1, tokenizer=tok), tiny_random_model(seed=2, tokenizer=tok), tok


def _mixture_logprob(policy, reference, beta, prompt, completion) -> float:
    """log Π_t π^β(y_t | x, y_<t) with π^β(v) = π(v)^(1−β) μ(v)^β / Σ_u π(u)^(1−β) μ(u)^β."""
    ids = torch.tensor([list(prompt) + list(completion)])
    with torch.no_grad():
        p = torch.softmax(policy(ids).logits[0].double(), -1)
        m = torch.softmax(reference(ids).logits[0].double(), -1)
    total = 0.0
    for t, token in enumerate(completion):
        position = len(prompt) - 1 + t
        unnormalised = p[position] ** (1 - beta) * m[position] ** beta
        total += float(torch.log(unnormalised[token] / unnormalised.sum()))
    return total


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
def test_sampled_log_probs_are_the_geometric_mixtures(beta):
    policy, reference, tok = _models()
    sampler = HFSampler(policy, tok, stop_token_ids=[tok.eos_token_id], mix_with=reference, beta=beta)
    rollouts = sampler.sample(PROMPTS, 3, 6, temperature=1.0, seed=4)
    for row, (prompt, completion) in enumerate(zip(rollouts.prompt_ids, rollouts.completion_ids)):
        expected = _mixture_logprob(policy, reference, beta, prompt, completion)
        assert float(rollouts.logp_policy[row].sum()) == pytest.approx(expected, abs=1e-4)


def test_beta_zero_and_one_sample_the_policy_and_the_reference():
    policy, reference, tok = _models()
    stop = [tok.eos_token_id]
    plain = HFSampler(policy, tok, stop_token_ids=stop).sample(PROMPTS, 2, 8, temperature=0.0)
    greedy_mix = HFSampler(policy, tok, stop_token_ids=stop, mix_with=reference, beta=0.0).sample(
        PROMPTS, 2, 8, temperature=0.0)
    assert greedy_mix.completion_ids == plain.completion_ids
    of_reference = HFSampler(reference, tok, stop_token_ids=stop).sample(PROMPTS, 2, 8, temperature=0.0)
    all_reference = HFSampler(policy, tok, stop_token_ids=stop, mix_with=reference, beta=1.0).sample(
        PROMPTS, 2, 8, temperature=0.0)
    assert all_reference.completion_ids == of_reference.completion_ids
    with pytest.raises(ValueError, match="beta"):
        HFSampler(policy, tok, mix_with=reference, beta=1.5)


def test_geometric_mixture_wraps_the_runs_sampler_and_vllm_refuses():
    policy, reference, tok = _models()
    mixed = geometric_mixture(HFSampler(policy, tok, max_batch_size=4), reference, 0.25)
    assert mixed.mix_with is reference and mixed.beta == 0.25 and mixed.max_batch_size == 4

    class VLLMSampler:       # what the check sees: not the transformers sampler
        pass
    with pytest.raises(ConfigError, match="rollout.sampler: hf"):
        geometric_mixture(VLLMSampler(), reference, 0.25)
