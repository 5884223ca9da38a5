"""The ``assurexray`` console command; each subcommand lives in its own module."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from assurexray.console import LOG_FORMAT, USER_ERROR_EXIT
from assurexray.errors import AssureXRayError

# subcommand -> module exposing add_arguments(parser) and run(args) -> exit code
SUBCOMMANDS = {
    "predict": ("assurexray.predict", "classify radiographs with a trained checkpoint"),
    "compare": ("assurexray.reporting.split_comparison",
                "compare the stratified and center-holdout experiments"),
    "serve": ("assurexray.serve.command", "serve a trained model over HTTP (API and web viewer)"),
    "drift": ("assurexray.serve.drift_command", "drift report of a folder or CSV of images"),
    "tune": ("assurexray.tune", "hyperparameter search, one DVC experiment per Optuna trial"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="assurexray", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    argv = sys.argv[1:] if argv is None else argv
    # Only the module of the command given is imported: `predict` with the ONNX engine then
    # starts without torch, timm, uvicorn or optuna.
    chosen = next((arg for arg in argv if not arg.startswith("-")), None)
    modules = {}
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        subparser = sub.add_parser(name, help=help_text)
        if name == chosen:
            module = importlib.import_module(module_name)
            subparser.description = module.__doc__
            module.add_arguments(subparser)
            modules[name] = module
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    try:
        return modules[args.command].run(args)
    except AssureXRayError as err:
        print(f"error: {err}", file=sys.stderr)
        return USER_ERROR_EXIT


if __name__ == "__main__":
    sys.exit(main())
