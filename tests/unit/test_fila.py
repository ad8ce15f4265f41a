"""FILA keeps the model's function at initialisation and puts the adapters on the forget directions."""
import torch
from peft import LoraConfig, get_peft_model

from unigrad.fila import fila_init
from unigrad.models import load_model
from unigrad.policy import collate
from unigrad.tokens import Sequence


def _sequences(tok, texts, sign):
    return [Sequence(tuple(tok.encode("Q: ")), tuple(tok.encode(t)), group=i, sign=sign) for i, t in enumerate(texts)]


def test_fila_preserves_the_function_and_initialises_non_zero_adapters():
    torch.set_num_threads(1)
    model, tok = load_model("tiny-random")
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    forget = _sequences(tok, ["Zorbek lives in Quelmar.", "Zorbek was born in 1802."], -1.0)
    retain = _sequences(tok, ["Paris is in France.", "Water boils at 100 C."], 1.0)
    tb = collate(forget + retain, tok.pad_token_id)
    with torch.no_grad():
        before = peft_model(input_ids=tb.input_ids).logits
    fila_init(peft_model, forget, retain, tok.pad_token_id)
    with torch.no_grad():
        after = peft_model(input_ids=tb.input_ids).logits
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)
    b_norms = [float(m.lora_B["default"].weight.detach().norm()) for _, m in peft_model.named_modules() if hasattr(m, "lora_B")
               and "default" in getattr(m, "lora_B", {})]
    assert b_norms and all(norm > 0 for norm in b_norms)   # default LoRA init has B = 0
