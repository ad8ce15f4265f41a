"""Finding reward functions by name: built-ins, ``module:function`` or ``path/to/file.py:function``."""
from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import os
import sys
from typing import Callable

from unigrad.rewards.verifiable import format_reward, math_verify_match, numeric_match

BUILTINS: dict[str, Callable] = {
    "numeric_match": numeric_match,
    "math_verify_match": math_verify_match,
    "format_reward": format_reward,
}


def load_reward(spec: str | Callable, **kwargs) -> Callable:
    """A reward function ``fn(prompt, completion, answer, **meta) -> float`` from ``spec``:

    - a built-in name: ``numeric_match``, ``math_verify_match``, ``format_reward``;
    - ``"package.module:function"`` (importable module);
    - ``"path/to/file.py:function"`` (a Python file, loaded as a module);
    - a reward-model folder (``AutoModelForSequenceClassification``, e.g. a ``reward-model`` run's
      ``final/``): a ``RewardModel`` on the GPU when there is one, ``kwargs`` its settings.

    ``kwargs`` are bound to the function (``functools.partial``), e.g. ``tolerance=1e-3``.
    Raises ValueError with what was wrong (file or attribute missing, not callable).
    """
    if callable(spec):
        fn = spec
    elif isinstance(spec, (str, os.PathLike)) and os.path.isdir(os.path.expanduser(str(spec))):
        return _reward_model(os.path.expanduser(str(spec)), kwargs)
    elif not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"reward: expected a name, 'module:function' or 'file.py:function', got {spec!r}")
    elif ":" not in spec or (spec in BUILTINS):
        if spec not in BUILTINS:
            raise ValueError(f"reward {spec!r}: not a built-in ({', '.join(BUILTINS)}); "
                             "give 'module:function', 'path/to/file.py:function' or a reward-model folder")
        fn = BUILTINS[spec]
    else:
        where, _, name = spec.rpartition(":")
        if not where or not name:
            raise ValueError(f"reward {spec!r}: expected 'module:function' or 'path/to/file.py:function'")
        module = _load_file(where, spec) if where.endswith(".py") or os.path.sep in where else _import(where, spec)
        if not hasattr(module, name):
            raise ValueError(f"reward {spec!r}: {where} has no attribute {name!r}")
        fn = getattr(module, name)
        if not callable(fn):
            raise ValueError(f"reward {spec!r}: {where}.{name} is not callable")
    return functools.partial(fn, **kwargs) if kwargs else fn


def _reward_model(folder: str, kwargs: dict):
    import torch

    from unigrad.rewards.models import RewardModel
    kwargs = {"device": "cuda" if torch.cuda.is_available() else "cpu", **kwargs}
    return RewardModel(folder, **kwargs)


def _import(module: str, spec: str):
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ValueError(f"reward {spec!r}: cannot import module {module!r} ({type(e).__name__}: {e})") from e
    except Exception as e:  # noqa: BLE001 - the user's module failed while importing (a SyntaxError, its own errors)
        raise ValueError(f"reward {spec!r}: importing module {module!r} failed ({type(e).__name__}: {e})") from e


def _load_file(path: str, spec: str):
    full = os.path.abspath(os.path.expanduser(path))
    if not os.path.isfile(full):
        raise ValueError(f"reward {spec!r}: no such file {path}")
    mod_name = "unigrad_user_reward_" + hashlib.sha1(full.encode()).hexdigest()[:12]
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    loader_spec = importlib.util.spec_from_file_location(mod_name, full)
    if loader_spec is None or loader_spec.loader is None:
        raise ValueError(f"reward {spec!r}: {path} is not a Python file; give 'path/to/file.py:function'")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[mod_name] = module
    try:
        loader_spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[mod_name]
        raise ValueError(f"reward {spec!r}: importing {path} failed ({type(e).__name__}: {e})") from e
    return module


__all__ = ["BUILTINS", "load_reward"]
