"""Reference log-probs log π_ref: precomputed once for a dataset and cached, or computed per batch."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from unigrad.experience import Split
from unigrad.logprobs import reference_logprobs
from unigrad.models import is_peft
from unigrad.data.packing import collate, per_token_rows


def fingerprint(model_name: str, splits: list[Split]) -> str:
    """What reference log-probs depend on: the model and every token of every sequence."""
    digest = hashlib.sha256(model_name.encode())
    for split in splits:
        digest.update(split.name.encode())
        for sequence in split.sequences:
            digest.update(repr((sequence.prompt_ids, sequence.completion_ids)).encode())
    return digest.hexdigest()


def _cached(path: Path, expected: str) -> dict | None:
    if not path.exists():
        return None
    with safe_open(str(path), framework="pt") as handle:
        if (handle.metadata() or {}).get("fingerprint") != expected:
            return None
    return {(key.split("/")[0], int(key.split("/")[1])): value for key, value in load_file(str(path)).items()}


class Reference:
    """log π_ref of any rows: precomputed once for a dataset (then no reference model stays in
    memory), or computed per batch under inference mode by the frozen ``reference`` role (with
    LoRA: the policy with its adapters switched off).

    ``table`` maps (split, row) to the initial policy's log-probs; it is written to
    ``cache`` (with a fingerprint of the model and the data) so that a resumed run uses the initial
    policy's values, not ones recomputed from its current weights."""

    def __init__(self, model=None, table: dict | None = None, chunk_size: int = 1024):
        self.model, self.table, self.chunk_size = model, table, chunk_size

    @classmethod
    def precomputed(cls, policy, splits: list[Split], cache: Path, model_name: str, pad_id: int, packed: bool,
                    chunk_size: int, batch_size: int, write: bool = True) -> "Reference":
        expected = fingerprint(model_name, splits)
        table = _cached(cache, expected)
        if table is None:
            table = {}
            for split in splits:
                for start in range(0, len(split.sequences), batch_size):
                    indices = list(range(start, min(start + batch_size, len(split.sequences))))
                    tb = collate([split.sequences[i] for i in indices], pad_id, packed=packed)
                    logp = reference_logprobs(policy, tb, chunk_size)
                    for row, index in enumerate(indices):
                        length = len(split.sequences[index].completion_ids)
                        table[(split.name, index)] = logp[row, :length].float().contiguous().cpu()
            if write:
                tmp = cache.with_suffix(".tmp")
                save_file({f"{split}/{index}": v for (split, index), v in table.items()}, str(tmp),
                          metadata={"fingerprint": expected})
                tmp.replace(cache)
        return cls(table=table, chunk_size=chunk_size)

    def __call__(self, keys: list | None, tb, dtype) -> torch.Tensor:
        if self.table is not None and keys is not None:
            out = torch.zeros(tb.completion_mask.shape, dtype=dtype)
            for row, key in enumerate(keys):
                values = self.table[key]
                out[row, :values.numel()] = values.to(dtype)
            return out.to(tb.completion_mask.device)
        if self.model is None:
            raise RuntimeError("reference log-probs were precomputed for the dataset only")
        inner = getattr(self.model, "model", self.model)
        if is_peft(inner):
            with inner.disable_adapter():
                return self.model(reference_logprobs, tb, self.chunk_size).to(dtype)
        return self.model(reference_logprobs, tb, self.chunk_size).to(dtype)


class Anchor:
    """log π_k: a frozen, whole copy of the policy as it was when the step's update began (Nash-MP's
    proximal centre, the iterate θ_k its two half steps start from). ``hold(policy)`` copies the policy's
    weights into it at the start of a step; calling it gives [N, T] log π_k of the sequences' completions,
    also for samples drawn later in the step (at the half point). A resumed run holds the loaded weights
    at its first step, so it needs no state of its own."""

    def __init__(self, copy, pad_id: int, batch_size: int, chunk_size: int = 1024):
        self.copy, self.pad_id, self.batch_size, self.chunk_size = copy, pad_id, batch_size, chunk_size

    def hold(self, policy) -> None:
        with torch.no_grad():
            for mine, theirs in zip(self.copy.parameters(), policy.parameters(), strict=True):
                mine.copy_(theirs)

    def __call__(self, sequences: list) -> torch.Tensor:
        return snapshot_logprobs(self.copy, sequences, self.pad_id, self.batch_size, self.chunk_size)


def snapshot_logprobs(model, sequences: list, pad_id: int, batch_size: int, chunk_size: int = 1024) -> torch.Tensor:
    """[N, T] log π of each sequence's completion tokens under ``model`` as it is now (0 past its end):
    the reference of a method whose reference is the policy at some earlier step (DNO's π_t), fixed
    when the data are made instead of holding a copy of those weights."""
    return per_token_rows(sequences, lambda tb: reference_logprobs(model, tb, chunk_size), pad_id, batch_size)


@dataclass(eq=False)
class WithReferenceLogprobs:
    """The experience of ``source`` with log π_ref of every row (``logp_ref`` [N, T]), computed when it is
    made: for what reads the reference on the whole step (PPO's KL-shaped reward, ``advantages.gae``).
    Every process computes the whole step's, so sharded layouts make the same calls."""
    source: object
    reference: Reference
    pad_id: int
    batch_size: int
    packed: bool = False

    @property
    def provides(self) -> frozenset[str]:
        return self.source.provides | {"logp_ref"}

    @property
    def epochs(self) -> int:
        return self.source.epochs

    def __call__(self, step: int):
        experience = self.source(step)
        experience.fields["logp_ref"] = per_token_rows(
            experience.sequences, lambda tb: self.reference(None, tb, torch.float32), self.pad_id, self.batch_size,
            self.packed)
        return experience

    def after_update(self) -> None:
        self.source.after_update()
