"""Rendering of every generated document: one Jinja2 environment, the named number filters,
the shared header and the one table macro (templates/_macros.md.j2).

Templates use StrictUndefined: a value the context lacks stops the render with its name
instead of printing blank. Context builders (``reporting/*.py``, ``data/audit.py``,
``explain/cam_gallery.py``) hand over plain values; numbers become text only through the filters
below, in the templates or in the table rows the builders assemble.
"""
from __future__ import annotations

import math
import os
from functools import cache, wraps
from pathlib import Path

from jinja2 import Environment, PackageLoader, StrictUndefined, Undefined

from assurexray import NOT_FOR_CLINICAL_USE

SYNTHETIC_BANNER = ("> **Synthetic data: every figure in this document comes from the synthetic "
                    "BTXRD twin (generated images), NOT from the real BTXRD dataset. These are NOT "
                    "BTXRD results**; they show that the pipeline runs, nothing about a model on "
                    "real radiographs.")
SYNTHETIC = "synthetic"


# --------------------------------------------------------------------------- named filters

def defined(x) -> bool:
    """A finite number (not a bool, None or NaN)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def num(x, digits: int = 3, missing: str = "n/a") -> str:
    """A number to ``digits`` decimals; ``missing`` when undefined (None, NaN)."""
    return f"{x:.{digits}f}" if defined(x) else missing


def ci(cell: dict | None) -> str:
    """'value (low-high)' from {value, ci_low, ci_high}, then ', count/n' for a proportion;
    'n/a' when the value is undefined."""
    if not cell or not defined(cell.get("value")):
        return "n/a"
    text = num(cell["value"])
    if defined(cell.get("ci_low")) and defined(cell.get("ci_high")):
        text += f" ({num(cell['ci_low'])}-{num(cell['ci_high'])})"
    if "count" in cell and "n" in cell:
        text += f", {cell['count']}/{cell['n']}"
    return text


def signed(x) -> str:
    """A difference with its sign, 3 decimals ('n/a' when undefined)."""
    return f"{x:+.3f}" if defined(x) else "n/a"


def short(x) -> str:
    """The shortest plain form of a number (0.5, 15, 1e-05)."""
    return f"{x:g}"


def percent(fraction: float) -> str:
    """A fraction as a percentage in its shortest form (0.95 -> '95%')."""
    return f"{100 * fraction:g}%"


def plain(value) -> str:
    """A parameter value as text (lists joined, booleans yes/no, null as 'none')."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ", ".join(plain(v) for v in value)
    if isinstance(value, dict):
        return "; ".join(f"{k} {plain(v)}" for k, v in value.items())
    return str(value)


def cell(value) -> str:
    """A table cell: pipes escaped, one line."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def strict(f):
    """The filter ``f`` failing on an undefined value: ``num`` would print it as 'n/a'."""
    @wraps(f)
    def checked(value, *args):
        if isinstance(value, Undefined):
            value._fail_with_undefined_error()
        return f(value, *args)
    return checked


FILTERS = {f.__name__: strict(f) for f in (num, ci, signed, short, percent, plain, cell)}


# --------------------------------------------------------------------------- environment

@cache
def environment() -> Environment:
    env = Environment(loader=PackageLoader("assurexray.reporting", "templates"),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                      keep_trailing_newline=True, autoescape=False)  # Markdown, not HTML
    env.filters.update(FILTERS)
    env.globals.update(NOT_FOR_CLINICAL_USE=NOT_FOR_CLINICAL_USE, SYNTHETIC_BANNER=SYNTHETIC_BANNER)
    return env


def render(template: str, **context) -> str:
    """A document from ``templates/<template>``; exactly one newline at the end."""
    return environment().get_template(template).render(**context).rstrip() + "\n"


def header(title: str, generator: str, inputs: str, source: str | None,
           unknown_why: str = "") -> dict:
    """The shared header's context. ``source`` is the data source name, None when unknown
    (then ``unknown_why`` says why, e.g. 'data/dataset.json missing: run `dvc repro`')."""
    return {"title": title, "generator": generator, "inputs": inputs,
            "synthetic": source == SYNTHETIC, "unknown_why": unknown_why if source is None else ""}


def relative_link(path: str | Path, doc_dir: str | Path) -> str:
    """``path`` relative to the document's folder, with forward slashes (a Markdown link)."""
    return Path(os.path.relpath(path, doc_dir)).as_posix()
