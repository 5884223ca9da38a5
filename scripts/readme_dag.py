#!/usr/bin/env python3
"""Print the README's pipeline diagram: `dvc dag --dot`, made readable, as a Mermaid block.

`dvc dag --mermaid` draws every dependency, including the implied ones (prepare -> report,
...), which buries the shape of the pipeline under 80 edges. This keeps only the edges that no
longer path implies (the transitive reduction) and draws a matrix stage once
(`anomaly_train@unet` and `anomaly_train@reversed` become `anomaly_train@*`).
tests/test_docs.py checks that the README holds exactly this block; after changing the stages:

    python scripts/readme_dag.py    # paste the output over the README's ```mermaid block
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EDGE = re.compile(r'^"([^"]+)" -> "([^"]+)"', re.M)


def stage_edges() -> set[tuple[str, str]]:
    """Edges between stages (matrix entries folded into one node)."""
    dot = subprocess.run(["dvc", "dag", "--dot"], cwd=REPO, check=True, capture_output=True,
                         text=True).stdout
    fold = lambda name: re.sub(r"@.*$", "@*", name)  # noqa: E731
    return {(fold(a), fold(b)) for a, b in EDGE.findall(dot) if fold(a) != fold(b)}


def transitive_reduction(edges: set[tuple[str, str]]) -> set[tuple[str, str]]:
    """The edges a -> b with no other path from a to b."""
    succ: dict[str, set[str]] = {}
    for a, b in edges:
        succ.setdefault(a, set()).add(b)

    def reachable(start: str, skip: tuple[str, str]) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            here = todo.pop()
            for nxt in succ.get(here, ()):
                if nxt in seen or (here, nxt) == skip:
                    continue
                seen.add(nxt)
                todo.append(nxt)
        return seen

    return {(a, b) for a, b in edges if b not in reachable(a, (a, b))}


def mermaid(edges: set[tuple[str, str]]) -> str:
    """A left-to-right Mermaid flowchart, edges sorted so the block is stable."""
    node = lambda name: name.replace("@*", "_each")  # noqa: E731  (Mermaid ids: no '@' or '*')
    label = lambda name: f'{node(name)}["{name}"]' if "@" in name else name  # noqa: E731
    lines = [f"  {label(a)} --> {label(b)}" for a, b in sorted(edges)]
    return "```mermaid\nflowchart LR\n" + "\n".join(lines) + "\n```"


if __name__ == "__main__":
    print(mermaid(transitive_reduction(stage_edges())))
