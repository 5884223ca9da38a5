"""The README and the guides against the code: the commands they show that are cheap to run
(``--help``, ``python -c`` checks) run and succeed, every ``-S key=value`` they pass to DVC is a
valid parameter, every relative link resolves, the pipeline diagram is the current DAG, and
``docs/`` holds only guides (the generated documents live in ``reports/``)."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from assurexray.params import load_params

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
GUIDES = sorted((REPO / "docs").glob("*.md"))
DOCUMENTS = [README, REPO / "CHANGELOG.md", *GUIDES]
FENCE = re.compile(r"^ *```(\w*)\n(.*?)^ *```", re.M | re.S)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
# A command is cheap when it only prints: a --help, or a `python -c` check. Everything else
# (training, serving, benchmarks) is covered by its own tests.
CHEAP = re.compile(r"^(assurexray|python) .*--help$|^python -c ")


def shell_commands(path: Path) -> list[list[str]]:
    """The commands of a document's ```bash blocks as argument lists (continuations and quoted
    multi-line arguments joined, comments dropped)."""
    commands = []
    for lang, body in FENCE.findall(path.read_text()):
        if lang != "bash":
            continue
        pending = ""
        for line in body.replace("\\\n", " ").splitlines():
            pending = f"{pending}\n{line}" if pending else line
            try:
                words = shlex.split(pending, comments=True)
            except ValueError:   # a quote still open: the command goes on
                continue
            pending = ""
            if words:
                commands.append(words)
    return commands


def cheap_commands() -> list[tuple[str, str]]:
    commands = [(p.name, shlex.join(words)) for p in DOCUMENTS for words in shell_commands(p)]
    return [(name, c) for name, c in commands if CHEAP.match(c)]


def test_the_guides_show_cheap_commands_to_check():
    """The extraction finds the checks the guides were written with (a regex gone wrong would
    silently check nothing)."""
    found = cheap_commands()
    assert len(found) >= 10
    assert {name for name, _ in found} >= {"predict-and-serve.md", "extending.md", "troubleshooting.md"}


@pytest.mark.slow   # each starts a Python process that imports the library (seconds each, idle)
@pytest.mark.parametrize("name,command", cheap_commands(), ids=lambda v: v[:60])
def test_cheap_command_runs(name, command):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(shlex.split(command), cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, f"{name}: `{command}` failed:\n{done.stderr[-2000:]}"
    assert done.stdout.strip(), f"{name}: `{command}` printed nothing"


def dvc_overrides() -> list[tuple[str, list[tuple[str, str]]]]:
    """(document, [(key, value), ...]) of every `dvc exp run -S ...` the documents show."""
    found = []
    for path in DOCUMENTS:
        for words in shell_commands(path):
            pairs = [words[i + 1].split("=", 1) for i, w in enumerate(words[:-1]) if w == "-S"]
            if words[:3] == ["dvc", "exp", "run"] and pairs:
                found.append((path.name, [(k, v) for k, v in pairs]))
    return found


def test_the_documents_show_dvc_experiments():
    assert len(dvc_overrides()) >= 8


@pytest.mark.parametrize("name,overrides", dvc_overrides(), ids=lambda v: str(v)[:70])
def test_every_shown_experiment_has_valid_params(name, overrides, tmp_path):
    """`-S key=value` pairs, applied to params.yaml as DVC would (the value read as YAML),
    give a file that loads: no unknown key, no wrong type, no value out of range."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for key, value in overrides:
        *parents, leaf = key.split(".")
        section = raw
        for part in parents:
            section = section[part]
        assert leaf in section, f"{name}: -S {key}: no such key in params.yaml"
        section[leaf] = yaml.safe_load(value)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    load_params(path)


def relative_links(path: Path) -> list[str]:
    text = FENCE.sub("", path.read_text())   # code blocks hold commands, not links
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:|#", t)]


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: p.name)
def test_every_relative_link_resolves(path):
    broken = [t for t in relative_links(path) if not (path.parent / t.split("#")[0]).exists()]
    assert not broken, f"{path.name}: links to missing files {broken}"


def test_readme_is_a_front_door():
    """At most about 200 lines, and one click from every guide."""
    text = README.read_text()
    assert len(text.splitlines()) <= 200
    linked = {(README.parent / t.split("#")[0]).resolve() for t in relative_links(README)}
    missing = [p.name for p in GUIDES if p.resolve() not in linked]
    assert not missing, f"README does not link the guides {missing}"
    assert "scripts/repro.sh" in text and "scripts/test.sh" in text


def test_readme_diagram_is_the_current_pipeline():
    sys.path.insert(0, str(REPO / "scripts"))
    import readme_dag

    expected = readme_dag.mermaid(readme_dag.transitive_reduction(readme_dag.stage_edges()))
    assert expected in README.read_text(), \
        "the stages changed: paste `python scripts/readme_dag.py` over the README's mermaid block"


def test_docs_holds_only_guides_and_stages_write_to_reports():
    generated = [p.name for p in GUIDES if "never edit by hand" in p.read_text()]
    assert not generated, f"generated documents in docs/: {generated} (they belong in reports/)"
    assert {p.name for p in (REPO / "docs").iterdir()} - {p.name for p in GUIDES} <= {"images"}
    pipeline = yaml.safe_load((REPO / "dvc.yaml").read_text())
    outs = [next(iter(o)) if isinstance(o, dict) else o
            for stage in pipeline["stages"].values() for o in stage.get("outs", [])]
    documents = [o for o in outs if str(o).endswith(".md")]
    assert documents and all(o.startswith("reports/") for o in documents), documents
