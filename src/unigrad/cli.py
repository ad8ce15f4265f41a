"""The command line: ``unigrad train CONFIG [key=value ...]``, ``unigrad methods``.

Errors a user can fix (config, data, model) print one paragraph and exit 2; ``--debug`` shows
the traceback instead.
"""
from __future__ import annotations

import argparse
import logging
import sys
from importlib import resources

from unigrad.config import ConfigError, load_config
from unigrad.data import DataError
from unigrad.methods.compose import MethodSpecError
from unigrad.models import ModelError

USER_ERRORS = (ConfigError, DataError, ModelError, MethodSpecError, FileNotFoundError)
QUICK_START = "quickstart.yaml"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unigrad", description="Post-training as one gradient estimator with four parts.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train with a config (no config: the bundled quick start)")
    train.add_argument("config", nargs="?", help="YAML config; key=value arguments override it")
    train.add_argument("overrides", nargs="*", help="overrides such as train.steps=20 method.beta=0.2")
    train.add_argument("--resume", action="store_true", help="continue from the last checkpoint in output_dir")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument("--debug", action="store_true", help="show tracebacks")
    commands.add_parser("methods", help="list every method with its four parts")
    return parser


def _train(args) -> int:
    from unigrad.train import train
    config_path, overrides = args.config, list(args.overrides)
    if config_path and "=" in config_path:       # `unigrad train key=value` with the quick start
        config_path, overrides = None, [config_path, *overrides]
    text = None
    if config_path is None:
        text = resources.files("unigrad").joinpath("resources", QUICK_START).read_text()
        print(f"unigrad: no config given, running the bundled quick start ({QUICK_START})", file=sys.stderr)
    config = load_config(config_path, overrides, text=text)
    summary = train(config, resume=args.resume, progress=not args.no_progress)
    shown = {k: v for k, v in summary.items() if k == "objective" or k.startswith("eval/")}
    print("done: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items()))
    print(f"model saved to {summary['final_model']}")
    return 0


def _methods(_args) -> int:
    from unigrad.methods import REGISTRY, describe, signature
    for name in sorted(REGISTRY):
        print(f"{name}({signature(name)})")
        print(describe(REGISTRY[name]()))
        print()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    bad = [item for item in extra if "=" not in item or item.startswith("-")]
    if bad or (extra and args.command != "train"):
        parser.error(f"unrecognized arguments: {' '.join(bad or extra)}")
    if extra:  # key=value overrides given after an option
        args.overrides = [*args.overrides, *extra]
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()   # per-save "Writing model shards" bars drown the training bar
    handler = {"train": _train, "methods": _methods}[args.command]
    try:
        return handler(args)
    except USER_ERRORS as error:
        if args.debug:
            raise
        print(f"unigrad: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("unigrad: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 — a bug of ours: say so, briefly
        if args.debug:
            raise
        print(f"unigrad: internal error: {type(error).__name__}: {error} (run with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
