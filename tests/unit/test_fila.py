"""FILA keeps the model's function at initialisation and puts the adapters on the forget directions."""
import torch
from peft import LoraConfig, get_peft_model

from unigrad.fila import fila_init
from unigrad.models import load_model
from unigrad.data.packing import collate
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


def _fisher_from_logits(model, sequences):
    """FILA's empirical Fisher, written out: one batch (≤ 8 sequences), (∂ token-mean NLL / ∂W)² of
    every 2-D projection weight, from the model's logits."""
    total, tokens = 0.0, 0
    for s in sequences:
        ids = torch.tensor([list(s.prompt_ids + s.completion_ids)])
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
        for i, y in enumerate(s.completion_ids):
            total, tokens = total - logp[len(s.prompt_ids) - 1 + i, y], tokens + 1
    names = [n for n, p in model.named_parameters() if p.dim() == 2 and "embed" not in n and "lm_head" not in n]
    params = dict(model.named_parameters())
    grads = torch.autograd.grad(total / tokens, [params[n] for n in names])
    return {n: g.double() ** 2 for n, g in zip(names, grads)}


def _adapter_checks(peft_model, weights, importance, rank):
    """Per LoRA layer: (how far M̂ = diag(r + ε)·s·B·A is from U Uᵀ M V Vᵀ, M = diag(r)·W, U and V the
    singular vectors of M̂; the share of M's best rank-q energy that M̂ holds)."""
    out = {}
    for name, layer in peft_model.named_modules():
        if not (hasattr(layer, "lora_B") and "default" in getattr(layer, "lora_B", {})):
            continue
        key = name.removeprefix("base_model.model.") + ".weight"
        r = importance[key].sum(1).sqrt()
        M = r[:, None] * weights[key]
        delta = layer.scaling["default"] * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
        M_hat = (r[:, None] + 1e-5) * delta.detach().double()
        U, S, Vh = torch.linalg.svd(M_hat, full_matrices=False)
        U, Vh = U[:, :rank], Vh[:rank]
        compressed = U @ (U.T @ M @ Vh.T) @ Vh
        best = torch.linalg.svdvals(M)[:rank].square().sum()
        out[key] = (float((compressed - M_hat).norm() / M_hat.norm()), float(M_hat.square().sum() / best))
    return out


def test_fila_puts_the_adapters_on_the_forget_important_directions():
    """With r_i = sqrt(Σ_j F_f/(1e-5 + F_r)) from the Fisher computed here and M = diag(r)·W, the
    adapters hold a rank-q compression of M onto its own singular directions (diag(r + ε)·s·B·A =
    U Uᵀ M V Vᵀ) that keeps most of M's best rank-q energy (the randomised SVD is not exact; a random
    rank-q subspace keeps far less). FILA with forget and retain swapped fails the same check."""
    import copy
    torch.set_num_threads(1)
    model, tok = load_model("tiny-random")
    forget = _sequences(tok, ["Zorbek lives in Quelmar.", "Zorbek was born in 1802."], -1.0)
    retain = _sequences(tok, ["Paris is in France.", "Water boils at 100 C."], 1.0)
    original = copy.deepcopy(model)
    weights = {n: p.detach().double() for n, p in original.named_parameters()}
    f_forget, f_retain = _fisher_from_logits(original, forget), _fisher_from_logits(original, retain)
    importance = {n: f_forget[n] / (1e-5 + f_retain[n]) for n in f_forget}

    def adapted(forget_set, retain_set):
        peft_model = get_peft_model(copy.deepcopy(original), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
        torch.manual_seed(0)
        fila_init(peft_model, forget_set, retain_set, tok.pad_token_id)
        return peft_model

    checks = _adapter_checks(adapted(forget, retain), weights, importance, rank=4)
    assert len(checks) == 14                                   # every linear layer of both blocks
    for key, (off, energy) in checks.items():
        assert off < 1e-4, f"{key}: the adapters are not a compression of diag(r)·W ({off:.2g})"
        assert energy > 0.7, f"{key}: the adapters keep only {energy:.2f} of the best rank-4 energy"
    swapped = _adapter_checks(adapted(retain, forget), weights, importance, rank=4)
    # out ≥ in: the compression is a projection of the columns, which the row weights r change; a wide W
    # (down_proj) is compressed on its rows, where r only chooses the subspace, hence the energy check
    tall = [key for key in checks if weights[key].shape[0] >= weights[key].shape[1]]
    assert len(tall) == 12 and all(swapped[key][0] > 1e-2 for key in tall)
    mean = lambda table: sum(energy for _, energy in table.values()) / len(table)  # noqa: E731
    assert mean(checks) > mean(swapped) + 0.2
