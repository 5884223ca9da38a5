"""Terminal output shared by the stages and the CLI: logging, progress bars, user errors."""
from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from tqdm import tqdm

from assurexray.errors import AssureXRayError

USER_ERROR_EXIT = 2
LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"
T = TypeVar("T")


def progress(iterable: Iterable[T] | None = None, **kwargs: Any) -> tqdm:
    """A tqdm bar drawn only on a terminal.

    Under ``dvc repro`` into a file or CI, redrawn frames would flood the log with carriage
    returns; there the bar is silent and the callers' summary log lines carry the progress.
    """
    return tqdm(iterable, disable=None, **kwargs)


def run_main(main: Callable[[], int | None]) -> None:
    """Run an entry point: INFO logging, and a user error as one line with exit code 2."""
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    try:
        code = main()
    except AssureXRayError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(USER_ERROR_EXIT)
    if code:  # a clean return leaves the interpreter to exit 0 (tests run stages in-process)
        sys.exit(code)
