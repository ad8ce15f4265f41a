"""Experience kept on disk between steps (DNO's iterations, DPH-RL's rehearsal set): sequences as
safetensors tensors beside a JSON record, each file written to a temporary name and renamed into place,
so a run killed mid-write leaves the previous file or none, never half of one."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch.nn.utils.rnn import pad_sequence

from unigrad.tokens import Sequence


def _rows(ids: list[tuple]) -> torch.Tensor:
    """[N, L] token ids, right-padded with 0 (the lengths are stored beside them)."""
    return pad_sequence([torch.tensor(row + (0,)) for row in ids], batch_first=True) if ids else torch.zeros(0, 1).long()


def sequence_tensors(sequences: list[Sequence]) -> dict[str, torch.Tensor]:
    """The sequences' prompt and completion token ids, padded, with their lengths."""
    return {"prompts": _rows([s.prompt_ids for s in sequences]),
            "completions": _rows([s.completion_ids for s in sequences]),
            "prompt_lengths": torch.tensor([len(s.prompt_ids) for s in sequences], dtype=torch.long),
            "completion_lengths": torch.tensor([len(s.completion_ids) for s in sequences], dtype=torch.long)}


def sequences_of(tensors: dict[str, torch.Tensor]) -> list[Sequence]:
    """``sequence_tensors``' inverse (token ids only)."""
    x = tensors
    return [Sequence(tuple(x["prompts"][i, :int(x["prompt_lengths"][i])].tolist()),
                     tuple(x["completions"][i, :int(x["completion_lengths"][i])].tolist()))
            for i in range(len(x["prompt_lengths"]))]


def write(tensors_path: Path, meta_path: Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """The tensors, then the record that describes them, each atomically."""
    tensors_path.parent.mkdir(parents=True, exist_ok=True)
    for path, put in ((tensors_path, lambda p: save_file({k: v.contiguous() for k, v in tensors.items()}, str(p))),
                      (meta_path, lambda p: p.write_text(json.dumps(meta)))):
        tmp = path.with_name(path.name + ".tmp")
        put(tmp)
        os.replace(tmp, path)


def read(tensors_path: Path, meta_path: Path) -> tuple[dict[str, torch.Tensor], dict] | None:
    """(tensors, record), or None when either file is missing."""
    if not (tensors_path.exists() and meta_path.exists()):
        return None
    return load_file(str(tensors_path)), json.loads(meta_path.read_text())


__all__ = ["read", "sequence_tensors", "sequences_of", "write"]
