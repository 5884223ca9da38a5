"""The project's error base.

Every error that means "the input, the data or the configuration is wrong" derives from
``AssureXRayError`` (each keeps its builtin base too, so ``except ValueError`` still works).
Entry points map the base once: the CLI and stages to exit code 2 with one line, the
service to an HTTP status. Anything else is a bug and keeps its traceback.
"""


class AssureXRayError(Exception):
    """A problem the user can fix; the message names the file or key and what to do."""
