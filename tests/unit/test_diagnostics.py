"""CHES diagnostic: scores against a direct computation, filtering, ``unigrad diagnose ches``."""
from __future__ import annotations

import json

import pytest
import torch

from unigrad.data import read_records, tokenize
from unigrad.diagnostics import ches_scores, filter_pairs
from unigrad.models import tiny_random_model, tiny_tokenizer

PAIRS = [
    {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5, or maybe 6."},
    {"prompt": "Capital of France?", "chosen": "Paris is the capital.", "rejected": "Lyon"},
    {"prompt": "Say hi", "chosen": "Hi there!", "rejected": "Hi there"},
    {"prompt": "Colour of the sky?", "chosen": "Blue.", "rejected": "Green, always green."},
    {"prompt": "2*3?", "chosen": "6", "rejected": "6"},
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    path = tmp_path_factory.mktemp("ches") / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in PAIRS))
    tok = tiny_tokenizer()
    model = tiny_random_model(seed=0, tokenizer=tok)
    seqs = tokenize(read_records(path), tok, "pairs", 256)
    return path, tok, model, seqs


def _direct(model, seq):
    """H = Σ of the last hidden_states entry from the last prompt token to the second-to-last token."""
    ids = torch.tensor([seq.prompt_ids + seq.completion_ids])
    with torch.no_grad():
        hs = model(ids, output_hidden_states=True).hidden_states[-1][0].double()
    p = len(seq.prompt_ids)
    return hs[p - 1:-1].sum(0), len(seq.completion_ids)


def test_ches_matches_the_definition(setup):
    _, tok, model, seqs = setup
    scores = ches_scores(model, tok, seqs, batch_size=3)     # padding across batches must not matter
    assert scores["ches"].shape == (len(PAIRS),) and scores["ln_ches"].shape == (len(PAIRS),)
    assert scores["group"].tolist() == list(range(len(PAIRS)))
    assert torch.isfinite(scores["ches"]).all() and torch.isfinite(scores["ln_ches"]).all()
    for g in range(len(PAIRS)):
        (hp, n_p), (hr, n_r) = _direct(model, seqs[2 * g]), _direct(model, seqs[2 * g + 1])
        ches = hp @ hr - hp @ hp
        ln = hp @ hr / (n_p * n_r) - hp @ hp / n_p ** 2
        torch.testing.assert_close(scores["ches"][g], ches, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(scores["ln_ches"][g], ln, rtol=1e-4, atol=1e-6)
    # identical chosen and rejected: ⟨H+, H−⟩ = ‖H+‖², so both scores are 0
    assert abs(float(scores["ches"][4])) < 1e-3 and abs(float(scores["ln_ches"][4])) < 1e-6


def test_filter_pairs_drops_the_highest_scores():
    s = torch.tensor([0.5, 3.0, -1.0, 2.0, 3.0, 0.0, 1.0, -2.0, 0.1, 0.2])
    assert filter_pairs(s, 0.8) == [0, 2, 3, 5, 6, 7, 8, 9]      # drops the two 3.0s
    assert filter_pairs(s, 0.9) == [0, 1, 2, 3, 5, 6, 7, 8, 9]   # tie: the earlier one is kept
    assert filter_pairs(s, 1.0) == list(range(10)) and filter_pairs(s, 0.0) == []
    with pytest.raises(ValueError):
        filter_pairs(s, 1.5)


def test_ches_needs_pairs(setup):
    _, tok, model, seqs = setup
    with pytest.raises(ValueError, match="lacks a chosen or a rejected"):
        ches_scores(model, tok, seqs[:3])


def test_diagnose_cli_writes_scores_and_the_filtered_set(setup, tmp_path):
    from unigrad.cli import main

    path, tok, model, seqs = setup
    out, kept = tmp_path / "scores.jsonl", tmp_path / "kept.jsonl"
    assert main(["diagnose", "ches", "--model", "tiny-random", "--data", str(path), "--out", str(out),
                 "--filter-out", str(kept), "--keep-fraction", "0.6"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["index"] for r in rows] == list(range(len(PAIRS))) and [r["line"] for r in rows] == [1, 2, 3, 4, 5]
    expected = ches_scores(model, tok, seqs)["ln_ches"]
    torch.testing.assert_close(torch.tensor([r["ln_ches"] for r in rows], dtype=torch.float64), expected, rtol=1e-4, atol=1e-6)
    kept_records = [json.loads(line) for line in kept.read_text().splitlines()]
    assert kept_records == [PAIRS[i] for i in filter_pairs(expected, 0.6)] and len(kept_records) == 3
    worst = int(torch.argmax(expected))
    assert PAIRS[worst] not in kept_records
