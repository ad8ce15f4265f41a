"""Generation backends behind one ``Sampler`` protocol: ``HFSampler`` (transformers, default) and
``VLLMSampler`` (vLLM, GPU; imported only when built)."""
from unigrad.rollout.base import Rollouts, Sampler
from unigrad.rollout.hf import HFSampler


def __getattr__(name):
    if name == "VLLMSampler":
        from unigrad.rollout.vllm import VLLMSampler
        return VLLMSampler
    raise AttributeError(f"module 'unigrad.rollout' has no attribute {name!r}")


__all__ = ["HFSampler", "Rollouts", "Sampler", "VLLMSampler"]
