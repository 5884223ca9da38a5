"""The ``assurexray`` console command; each subcommand lives in its own module."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

# subcommand -> module exposing add_arguments(parser) and run(args) -> exit code
SUBCOMMANDS = {
    "predict": ("assurexray.predict", "classify radiographs with a trained checkpoint"),
    "compare": ("assurexray.compare", "compare the stratified and center-holdout experiments"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="assurexray", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    modules = {}
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        module.add_arguments(sub.add_parser(name, help=help_text, description=module.__doc__))
        modules[name] = module
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return modules[args.command].run(args)


if __name__ == "__main__":
    sys.exit(main())
