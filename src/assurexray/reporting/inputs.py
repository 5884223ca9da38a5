"""The files the model card and the run report are generated from, read leniently.

A missing or unreadable file becomes a Source without data (and the reason); a file lacking
a key a section reads (written by an older stage) raises MissingKey naming the file. Either
turns the section into an explicit 'not available' line (``guarded``) instead of a crash.
"""
from __future__ import annotations

import csv
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from assurexray.errors import AssureXRayError
from assurexray.params import Params
from assurexray.training.checkpoint import load_checkpoint

log = logging.getLogger(__name__)

# File names inside the metrics folder (the stages' contract, see docs/architecture.md).
METRICS_FILES = {"audit": "audit.json", "split": "split.json", "evaluate": "evaluate.json",
                 "calibration": "calibration.json", "robustness": "robustness.json",
                 "explain": "explain.json", "analysis": "analysis.json", "anomaly": "anomaly.json",
                 "seed_spread": "seed_spread.json"}
SUBGROUPS_FILE = "subgroups.csv"
# plots/ subfolder -> the report section that shows its figures; others go to an appendix.
FIGURE_SECTIONS = {"audit": "audit", "evaluate": "results", "calibration": "calibration",
                   "analysis": "subgroups", "robustness": "robustness", "gallery": "gradcam"}
TEXT_COLUMNS = ("factor", "level", "reason")


class MissingKey(AssureXRayError, LookupError):
    """A file lacks a key a section reads (written by an older version of its stage)."""


class FileDict(dict):
    """A mapping read from a file; a missing key raises MissingKey naming the file."""

    def __init__(self, data: dict, file: str):
        super().__init__(data)
        self.file = file

    def __missing__(self, key):
        raise MissingKey(f"{self.file} has no key '{key}'")


def _wrap(value, file: str):
    if isinstance(value, dict):
        return FileDict({str(k): _wrap(v, file) for k, v in value.items()}, file)
    if isinstance(value, list):
        return [_wrap(v, file) for v in value]
    return value


def not_available(why: str) -> str:
    return f"_Not available ({why}: run `dvc repro`)._"


@dataclass(frozen=True)
class Source:
    """One input file: its content, or None and why not ('missing', 'unreadable (...)')."""
    path: str
    data: Any = None
    problem: str = "missing"

    @property
    def available(self) -> bool:
        return self.data is not None

    def unavailable(self) -> str:
        return not_available(f"{self.path} {self.problem}")


@dataclass(frozen=True)
class Section:
    """A section's context, or the 'not available' lines that replace it."""
    data: Any = None
    missing: tuple[str, ...] = ()


def guarded(build: Callable[[], Any], *sources: Source) -> Section:
    """build() as a Section, or a 'not available' line per missing source, or for a missing key."""
    missing = tuple(s.unavailable() for s in sources if not s.available)
    if missing:
        return Section(missing=missing)
    try:
        return Section(build())
    except MissingKey as exc:
        log.warning("%s", exc)
        return Section(missing=(not_available(str(exc)),))


def when_available(source: Source, build: Callable[[Any], list[str]]) -> list[str]:
    """build(data) when the file is there, [] when not; a missing key gives its 'not available'
    line (for lists of sentences such as caveats)."""
    if not source.available:
        return []
    section = guarded(lambda: build(source.data), source)
    return list(section.missing) or section.data


def _read(path: str | Path, load: Callable[[Path], Any], errors: tuple) -> Source:
    name = Path(path).as_posix()
    try:
        return Source(name, load(Path(path)))
    except FileNotFoundError:
        log.warning("%s: missing", name)
        return Source(name)
    except errors as exc:
        log.warning("%s: unreadable (%s)", name, exc)
        return Source(name, None, f"unreadable ({exc})")


def read_json(path: str | Path) -> Source:
    """A JSON object file as a Source (missing or unreadable: no data, with the reason)."""
    def load(p: Path):
        data = json.loads(p.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return _wrap(data, p.as_posix())
    return _read(path, load, (OSError, UnicodeDecodeError, ValueError))


def _csv_value(text: str):
    """'' -> None, True/False -> bool, else int or float (ValueError if neither)."""
    if text == "":
        return None
    if text in ("True", "False"):
        return text == "True"
    try:
        return int(text)
    except ValueError:
        return float(text)


def read_subgroups(path: str | Path) -> Source:
    """metrics/subgroups.csv as a Source of row mappings (numbers parsed, '' -> None)."""
    def load(p: Path):
        with open(p, newline="", encoding="utf-8") as handle:
            return [FileDict({k: v if k in TEXT_COLUMNS else _csv_value(v) for k, v in row.items()},
                             p.as_posix()) for row in csv.DictReader(handle)]
    return _read(path, load, (OSError, UnicodeDecodeError, ValueError, csv.Error))


def read_checkpoint_meta(path: str | Path) -> Source:
    """The checkpoint's meta (model details, provenance) as a Source."""
    name = Path(path).as_posix()
    try:
        _, meta = load_checkpoint(path)
    except FileNotFoundError:
        log.warning("%s: missing", name)
        return Source(name)
    except ValueError as exc:  # CheckpointError, or a backbone this timm does not know
        log.warning("%s", exc)
        return Source(name, None, "unreadable (not a valid checkpoint)")
    return Source(name, meta)


@dataclass(frozen=True)
class Inputs:
    """Everything the model card and the report are generated from."""
    params: Params
    info: Source
    checkpoint: Source
    train: Source
    audit: Source
    split: Source
    evaluate: Source
    calibration: Source
    robustness: Source
    anomaly: Source
    explain: Source
    analysis: Source
    seed_spread: Source     # scripts/seed_spread.sh (outside the pipeline; may be of another run)
    subgroups: Source
    figures: dict[str, list[Path]]  # report section -> PNG files

    def missing(self) -> list[str]:
        """'path problem' of every input file that could not be read."""
        return [f"{s.path} {s.problem}" for s in vars(self).values()
                if isinstance(s, Source) and not s.available]


def load_inputs(params: Params, info: str | Path, model: str | Path, metrics_dir: str | Path,
                train_metrics: str | Path, plots_dir: str | Path) -> Inputs:
    metrics_dir = Path(metrics_dir)
    return Inputs(
        params=params, info=read_json(info), checkpoint=read_checkpoint_meta(model),
        train=read_json(train_metrics),
        **{key: read_json(metrics_dir / name) for key, name in METRICS_FILES.items()},
        subgroups=read_subgroups(metrics_dir / SUBGROUPS_FILE),
        figures=find_figures(plots_dir))


def find_figures(plots_dir: str | Path) -> dict[str, list[Path]]:
    """PNG files under ``plots_dir`` by the report section of their subfolder ('other' if none)."""
    out: dict[str, list[Path]] = {}
    for path in sorted(Path(plots_dir).rglob("*.png")):
        folder = path.relative_to(plots_dir).parts[0] if path.parent != Path(plots_dir) else ""
        out.setdefault(FIGURE_SECTIONS.get(folder, "other"), []).append(path)
    return out
