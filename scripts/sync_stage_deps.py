#!/usr/bin/env python3
"""Rewrite the ``src/`` deps of every dvc.yaml stage from the imports of its script.

Run after moving or adding library modules; tests/test_pipeline_definition.py checks the
result. Data deps, params and outs are left untouched.
"""
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from test_pipeline_definition import STAGES, imported_files  # noqa: E402


def synced(lines: list[str]) -> list[str]:
    out, stage, i = [], None, 0
    while i < len(lines):
        line = lines[i]
        header = re.match(r"^  ([a-z_]+):$", line)
        if header:
            stage = header.group(1)
        out.append(line)
        i += 1
        if stage in STAGES and line.strip() == f"- stages/{stage}.py":
            indent = line[: line.index("-")]
            while i < len(lines) and lines[i].strip().startswith("- src/"):
                i += 1
            files = imported_files(REPO / "stages" / f"{stage}.py")
            out += [f"{indent}- {p.relative_to(REPO)}" for p in sorted(files)]
    return out


if __name__ == "__main__":
    path = REPO / "dvc.yaml"
    path.write_text("\n".join(synced(path.read_text().splitlines())) + "\n")
