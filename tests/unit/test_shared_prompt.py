"""Forwarding each distinct prompt once and sharing its KV cache among its completions gives the
per-token log-probs, and their gradients, of the ordinary (packed or padded) forward."""
import pytest
import torch

from unigrad.data.packing import collate
from unigrad.logprobs import shared_prompt_logprobs, shares_prompts, token_logprobs
from unigrad.models import tiny_random_model, tiny_tokenizer
from unigrad.tokens import Sequence

PAD = 258


def _sequences(prompt_lengths, per_prompt, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for k, length in enumerate(prompt_lengths):
        prompt = tuple(torch.randint(3, 200, (length,), generator=g).tolist())
        for _ in range(per_prompt):
            n = int(torch.randint(1, 9, (1,), generator=g))
            out.append(Sequence(prompt, tuple(torch.randint(3, 200, (n,), generator=g).tolist()), group=k))
    return out


@pytest.mark.parametrize("prompt_lengths, per_prompt", [([5, 9, 3], 3), ([7], 4), ([4, 6], 2)])
def test_shared_prompt_forward_equals_the_packed_forward(prompt_lengths, per_prompt):
    model = tiny_random_model(seed=1, tokenizer=tiny_tokenizer()).double()
    sequences = _sequences(prompt_lengths, per_prompt)
    order = torch.randperm(len(sequences), generator=torch.Generator().manual_seed(2)).tolist()
    sequences = [sequences[i] for i in order]          # a prompt's completions need not be adjacent
    assert shares_prompts(sequences)
    packed = token_logprobs(model, collate(sequences, PAD, packed=True))
    shared = shared_prompt_logprobs(model, sequences, PAD)
    assert shared.shape == packed.shape
    torch.testing.assert_close(shared, packed, rtol=0, atol=1e-10)
    weights = torch.randn(packed.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    params = list(model.parameters())
    g_packed = torch.autograd.grad((packed * weights).sum(), params)
    g_shared = torch.autograd.grad((shared_prompt_logprobs(model, sequences, PAD) * weights).sum(), params)
    for a, b in zip(g_packed, g_shared):
        # float64, yet only to ~1e-7 relative: HF's LlamaRMSNorm computes in float32 whatever the model's
        # dtype, and the shared path sums a prompt's gradients from its completions before that float32
        # backward where the packed path sums them after (with one completion per prompt: 5e-16)
        assert float((a - b).abs().max()) <= 1e-6 * float(a.abs().max()) + 1e-12


def test_sequences_without_a_shared_prompt_are_not_shared():
    assert not shares_prompts(_sequences([3, 4, 5], 1))


def test_training_with_shared_prompts_gives_the_same_model(tmp_path):
    from pathlib import Path

    from safetensors.torch import load_file

    from unigrad.config import load_config
    from unigrad.train import train
    root = Path(__file__).resolve().parents[2]
    for share in ("true", "false"):
        config = load_config(str(root / "configs" / "tiny-hpt.yaml"),
                             ["train.steps=2", "rollout.temperature=0", "data.task.eval_size=2", "train.threads=1",
                              f"train.share_prompts={share}", f"output_dir={tmp_path / share}"])
        train(config, progress=False)
    a = load_file(str(tmp_path / "true" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "false" / "final" / "model.safetensors"))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
