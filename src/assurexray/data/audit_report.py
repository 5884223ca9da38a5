"""The audit's human-facing outputs: DVC plot data and figures, and the context of the audit
report (reports/data_audit.md, rendered by the reporting wing from templates/data_audit.md.j2)."""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from assurexray.data.audit import AuditResult, annotation_coverage, class_by_center


def value_counts(column: pd.Series) -> dict[str, int]:
    """Counts of ';'-joined values ('' counted as '(none)'), most frequent first."""
    counts = Counter(v for cell in column for v in (cell.split(";") if cell else ["(none)"]))
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


MAX_LISTED_NOTES = 100  # longer note lists are summarised by reason; the CSV has them all


def report_context(result: AuditResult, figures: dict[str, Path], report_path: str | Path) -> dict:
    """The body of reports/data_audit.md (templates/data_audit.md.j2 in the reporting wing):
    reconciliation, distributions, duplicates, exclusions, warnings; figures by relative path."""
    t, notes, ids = result.table, result.notes, result.table["image_id"]
    usable, bad, warned = t[t["usable"]], t[~t["usable"]], t[t["warnings"] != ""]
    counts = result.metrics["class_by_center"]
    return {
        "info": result.info, "metrics": result.metrics,
        "figures": {name: Path(os.path.relpath(path, Path(report_path).parent)).as_posix()
                    for name, path in figures.items()},
        "notes": notes[["path", "reason"]].values[:MAX_LISTED_NOTES].tolist(),
        "more_notes": max(len(notes) - MAX_LISTED_NOTES, 0),
        "class_by_center": {"header": ["class", *(f"center {c}" for c in next(iter(counts.values()), {}))],
                            "rows": [[c, *row.values()] for c, row in counts.items()]},
        "sizes": [[axis, *(int(f(usable[f"decoded_{axis}"])) if len(usable) else "-"
                           for f in (np.min, np.median, np.max))] for axis in ("width", "height")],
        "value_counts": {key: list(value_counts(usable[key]).items()) for key in ("view", "sites")},
        "coverage": [list(r.values()) for r in annotation_coverage(result)],
        "pairs": [[t.at[a, "dup_cluster"], ids[a], ids[b], f"{t.at[a, 'label']} / {t.at[b, 'label']}",
                   "exact" if exact else "near", d]
                  for a, b, d, exact in result.pairs.itertuples(index=False)],
        "excluded": bad[["image_id", "file", "reason"]].values.tolist(),
        "warned": warned[["image_id", "file", "usable", "warnings"]].values.tolist(),
    }


def write_plots(result: AuditResult, out_dir: str | Path) -> dict[str, Path]:
    """DVC plot data (JSON) and PNG figures; returns the figures by name."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    usable = result.table[result.table["usable"]]
    data = {
        "class_by_center": [{"class": r["label"], "center": r["center"] or "unknown"}
                            for r in usable.to_dict("records")],
        "image_sizes": [{"image_id": r["image_id"], "class": r["label"], "width": r["decoded_width"],
                         "height": r["decoded_height"]} for r in usable.to_dict("records")],
        "views": [{"view": k, "count": n} for k, n in value_counts(usable["view"]).items()],
        "sites": [{"site": k, "count": n} for k, n in value_counts(usable["sites"]).items()],
        "annotation_coverage": annotation_coverage(result),
    }
    for name, records in data.items():
        (out_dir / f"{name}.json").write_text(json.dumps(records, indent=1) + "\n")
    return {name: _save(fig, out_dir / f"{name}.png") for name, fig in _figures(result, data).items()}


def _figures(result: AuditResult, data: dict) -> dict[str, Figure]:
    table = class_by_center(result.table[result.table["usable"]], result.info.classes)
    centers = sorted({ctr for row in table.values() for ctr in row})
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    width = 0.8 / max(len(centers), 1)
    for k, ctr in enumerate(centers):
        ax.bar(np.arange(len(table)) + k * width, [table[c][ctr] for c in table], width,
               label=f"center {ctr}")
    ax.set_xticks(np.arange(len(table)) + 0.4 - width / 2, list(table))
    ax.set(ylabel="usable images", title="Class x center")
    ax.legend()
    figs = {"class_by_center": fig}

    fig = Figure(figsize=(5, 4))
    ax = fig.subplots()
    sizes = pd.DataFrame(data["image_sizes"], columns=["class", "width", "height"])
    for c in result.info.classes:
        rows = sizes[sizes["class"] == c]
        ax.scatter(rows["width"], rows["height"], s=6, alpha=0.6, label=c)
    ax.set(xlabel="width (px)", ylabel="height (px)", title="Decoded image sizes (usable)")
    ax.legend()
    figs["image_sizes"] = fig

    fig = Figure(figsize=(9, 3.5))
    for ax, key in zip(fig.subplots(1, 2), ("views", "sites")):
        names = [r[key[:-1]] for r in data[key]]
        ax.barh(names[::-1], [r["count"] for r in data[key]][::-1])
        ax.set(xlabel="usable images", title=key.capitalize())
    figs["views_sites"] = fig

    fig = Figure(figsize=(5, 3))
    ax = fig.subplots()
    cov = data["annotation_coverage"]
    ax.bar([r["class"] for r in cov], [r["coverage"] for r in cov])
    ax.set(ylim=(0, 1), ylabel="fraction with usable annotation", title="Annotation coverage")
    figs["annotation_coverage"] = fig
    return figs


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})  # no version stamp: same bytes per run
    return path
