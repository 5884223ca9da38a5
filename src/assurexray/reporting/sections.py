"""Context builders shared by the model card and the run report.

Each builder turns a loaded metrics file into plain values for a macro of
templates/_sections.md.j2; a key the file lacks raises MissingKey (see inputs.guarded).
"""
from __future__ import annotations

import re
from functools import cache
from importlib import resources

import yaml

from assurexray.anomaly.classifier_comparison import comparison_context
from assurexray.errors import AssureXRayError
from assurexray.evaluation.applicability import applies
from assurexray.params import Params
from assurexray.reporting.inputs import Inputs, Source, when_available
from assurexray.reporting.render import ci, defined, header, num, short

OPERATING_POINTS = ("youden", "sensitivity_target", "specificity_target")
GENERATOR = "the report stage (`stages/report.py`, `dvc repro report`)"
PUBLISHED_FILE = "published.yaml"
DOI = re.compile(r"^10\.\d{4,9}/\S+$")
COMMIT = re.compile(r"^[0-9a-f]{40}$")


# --------------------------------------------------------------------------- published figures

class CitationError(AssureXRayError, ValueError):
    """An external figure in published.yaml without a usable citation."""


def citation_text(citation: dict, where: str) -> str:
    """'doi 10.x/y' or 'repository@commit:file'; CitationError when neither is complete."""
    doi = citation.get("doi") if isinstance(citation, dict) else None
    if isinstance(doi, str) and DOI.match(doi):
        return f"doi {doi}"
    parts = [citation.get(k) if isinstance(citation, dict) else None
             for k in ("repository", "commit", "file")]
    given = [p for p in parts if isinstance(p, str) and p]
    if len(given) == len(parts) and COMMIT.match(given[1]):
        repository, commit, file = given
        return f"{repository} at commit {commit}, file `{file}`"
    raise CitationError(f"{PUBLISHED_FILE}: {where} has no citation (a paper doi, or repository, "
                        "40-hex commit and file)")


def published(text: str | None = None) -> dict:
    """The dataset reference and the published results, each figure with its citation."""
    data = yaml.safe_load(text if text is not None else _published_text())
    dataset = data["dataset"]
    rows = []
    for i, r in enumerate(data["results"]):
        if not r.get("figures"):
            raise CitationError(f"{PUBLISHED_FILE}: results[{i}] ({r.get('work')}) states no figure")
        rows.append([r["work"], r["split"], r["model"],
                     ", ".join(f"{f['figure']} {num(f['value'])}" for f in r["figures"]),
                     citation_text(r.get("citation"), f"results[{i}] ({r['work']})")])
    return {"dataset": f"{dataset['reference']}, {citation_text(dataset['citation'], 'dataset')}",
            "licence": dataset["licence"], "rows": rows}


@cache
def _published_text() -> str:
    return resources.files("assurexray.reporting").joinpath(PUBLISHED_FILE).read_text("utf-8")


# --------------------------------------------------------------------------- header, data

def document_header(title: str, inputs: Inputs) -> dict:
    """The shared header plus the data-source line of the card and the report."""
    info = inputs.info
    source = info.data.get("source") if info.available else None
    why = (f"{info.path} has no key 'source'" if info.available
           else f"{info.path} {info.problem}: run `dvc repro`")
    return {"header": header(title, GENERATOR, "the pipeline's metrics files", source, why),
            "info": {"source": info.data.get("source", "unknown"),
                     "classes": info.data.get("classes", [])} if info.available else None}


def split_design(params: Params) -> dict:
    """The split strategy from params.yaml (rendered by the split_design macro)."""
    o = params.split_options
    return {"split": params.split, "train_centers": o.train_centers,
            "val_fraction": o.center_val_fraction, "fractions": "/".join(map(short, o.fractions))}


def partitions(split: dict, names: tuple[str, ...]) -> dict:
    """Images, groups, per class and per center for each partition (a table)."""
    classes = list(split[names[0]]["by_class"])
    rows = [[p, split[p]["images"], split[p]["groups"], *(split[p]["by_class"][c] for c in classes),
             ", ".join(f"{c}: {n}" for c, n in split[p]["by_center"].items()) or "none"]
            for p in names]
    return {"header": ["partition", "images", "groups", *classes, "images by center"], "rows": rows}


# --------------------------------------------------------------------------- results

HEADLINE_BAND = {"macro_auc": "test_macro_auc", "accuracy": "test_accuracy",
                 "balanced_accuracy": "test_balanced_accuracy"}


def headline(analysis: dict, spread: dict | None = None) -> dict:
    """Test metrics with grouped bootstrap intervals, overall and per class; with the seed
    spread of this run (``run_spread``), each overall figure's mean and range over the seeds."""
    test = analysis["test"]
    overall = []
    for key, name in (("macro_auc", "macro AUC (one-vs-rest)"), ("accuracy", "accuracy"),
                      ("balanced_accuracy", "balanced accuracy")):
        row = [name, ci(test[key])]
        if spread is not None:
            band = spread["metrics"][HEADLINE_BAND[key]]
            row.append(f"{num(band['mean'])} ({num(band['min'])}-{num(band['max'])})")
        overall.append(row)
    return {"n_images": test["n_images"], "n_groups": test["n_groups"],
            "level": analysis["ci_level"], "method": analysis["method"],
            "iterations": analysis["iterations"], "seed": analysis["seed"],
            "note": test.get("note"), "overall": overall,
            "band_seeds": None if spread is None else len(spread["runs"]),
            "classes": [[c, ci(test["auc"][c]), ci(test["sensitivity"][c]),
                         ci(test["specificity"][c])] for c in test["auc"]]}


def run_spread(spread: Source, analysis: Source) -> dict | None:
    """seed_spread.json when it was measured on the run ``analysis`` describes (its copy of
    this run's test macro AUC matches), else None."""
    if not (spread.available and analysis.available):
        return None
    try:
        here = analysis.data["test"]["macro_auc"]["value"]
        there = spread.data["runs"][0]["metrics"]["test_macro_auc"]
    except (LookupError, TypeError):
        return None
    return spread.data if here is not None and abs(here - there) <= 1e-9 else None


def target_text(key: str, point: dict) -> str:
    if key == "youden":
        return "Youden (max sensitivity + specificity - 1)"
    return f"{key.split('_')[0]} >= {num(point['target'], 2)}"


def missed_targets(analysis: dict) -> list[str]:
    """Operating-point targets not met on validation (the file's note) or on test."""
    out = []
    for task, points in analysis["operating_points"].items():
        for key in () if "skipped" in points else ("sensitivity_target", "specificity_target"):
            point, rate = points[key], key.split("_")[0]
            achieved = point["test"][rate]["value"]
            if point["note"]:
                out.append(f"{task} {target_text(key, point)}: {point['note']}.")
            elif not defined(achieved) or achieved < point["target"]:
                out.append(f"{task} {target_text(key, point)}: met on validation, but test "
                           f"{rate} is {num(achieved)} (threshold chosen on validation).")
    return out


def operating_points(analysis: dict) -> dict:
    """Per binary task: the three operating points (or why the task was skipped)."""
    tasks = []
    for task, points in analysis["operating_points"].items():
        if "skipped" in points:
            tasks.append({"name": task, "skipped": points["skipped"]})
            continue
        rows = [[target_text(k, points[k]), num(points[k]["threshold"], 4),
                 *(num(points[k]["val"][r]) for r in ("sensitivity", "specificity")),
                 *(ci(points[k]["test"][r]) for r in ("sensitivity", "specificity", "ppv", "npv"))]
                for k in OPERATING_POINTS]
        tasks.append({"name": task, "skipped": None, "score": points["score"], "rows": rows,
                      "decision": points.get("decision")})
    scales = sorted({p["scale"] for p in analysis["operating_points"].values() if "scale" in p})
    return {"level": analysis["ci_level"], "tasks": tasks, "missed": missed_targets(analysis),
            "method": analysis.get("methods", {}).get("operating_points", "grouped bootstrap"),
            "scales": scales}


def calibration_summary(cal: dict, analysis: dict | None = None) -> dict:
    """Temperature, test ECE before and after scaling (as text, with the grouped interval
    the analyze stage measured when ``analysis`` holds it) and test NLL."""
    test = cal["test"]
    return {"temperature": cal["temperature"], "n_bins": cal["n_bins"],
            "ece": [ece_text(test[s]["ece"], s, analysis) for s in ("before", "after")],
            "nll": [test["before"]["nll"], test["after"]["nll"]]}


def ece_text(value: float, scaling: str, analysis: dict | None, digits: int = 3) -> str:
    """The test ECE ``before`` or ``after`` scaling, with analyze's grouped interval (same
    temperature, so the same value) when there is one."""
    interval = ((analysis or {}).get("calibration") or {}).get("ece", {}).get(scaling)
    return ci(interval) if interval else num(value, digits)


def robustness_summary(rob: dict) -> dict:
    return {"clean_auc": rob["clean"]["macro_auc"], "drop": rob["worst_macro_auc_drop"],
            "worst": rob["worst_corruption"], "severities": rob["severities"]}


def vs_chance(g: dict) -> str:
    """Pointing game against its chance level. With the grouped interval of their ratio, the
    claim 'above chance' needs the whole interval above 1, and the ratio is quoted with it."""
    if not g["n"] or not defined(g.get("pointing_game")):
        return "n/a"
    ratio = (g.get("intervals") or {}).get("pointing_vs_chance")
    if ratio and defined(ratio.get("ci_low")):
        times = f"x{num(ratio['value'], 2)}, interval {num(ratio['ci_low'], 2)}-{num(ratio['ci_high'], 2)}"
        if ratio["ci_low"] > 1:
            return f"above chance ({times})"
        return f"not shown above chance ({times})" if ratio["value"] > 1 else "not above chance"
    if g["pointing_game"] > g["chance"]:
        times = f" (x{num(g['pointing_game'] / g['chance'], 2)})" if g["chance"] else ""
        return "above chance" + times
    return "not above chance"


def with_interval(g: dict, key: str) -> str:
    """A localization figure of summary ``g``, with its grouped interval when it has one."""
    interval = (g.get("intervals") or {}).get(key)
    return ci(interval) if interval else num(g.get(key))


def gradcam_summary(explain: dict) -> dict:
    """The headline localization figures; ``localized`` False (and the reason) when
    localization did not apply (no annotated test image)."""
    base = {"method": explain["method"], "n_annotated": explain["n_annotated"]}
    loc = explain["localization"]
    if not applies(loc):
        return {**base, "localized": False, "reason": loc["reason"]}
    o, good, bad = (loc["true_class"][k] for k in ("overall", "correct", "incorrect"))
    return {**base, "localized": True, "pointing_game": with_interval(o, "pointing_game"),
            "chance": o.get("chance"), "vs_chance": vs_chance(o),
            "energy": with_interval(o, "energy_pointing"),
            "correct": [with_interval(good, "pointing_game"), good["n"]],
            "incorrect": [with_interval(bad, "pointing_game"), bad["n"]]}


# --------------------------------------------------------------------------- caveats

def run_specific_caveats(inputs: Inputs) -> list[str]:
    """Caveats that depend on this run's files (none from a missing file)."""
    out = []
    if inputs.info.available and inputs.info.data.get("source") == "synthetic":
        out.append("- This run used the synthetic BTXRD twin: its numbers validate the pipeline, "
                   "not any model of real radiographs.")
    if inputs.params.split == "stratified":
        out.append("- Stratified split: the test images come from the training centers, so the "
                   "results do not measure transfer to a new center (run the center-holdout "
                   "split: `dvc exp run -S split=center`).")
    out += when_available(inputs.split, _leakage_caveat)
    out += when_available(inputs.subgroups, _subgroup_caveat)
    out += when_available(inputs.analysis, lambda a: [f"- Operating point {m}"
                                                      for m in missed_targets(a)])
    out += when_available(inputs.explain, _gradcam_caveat)
    return out


def _leakage_caveat(split: dict) -> list[str]:
    leak = split["leakage"]
    crossing = leak["groups_crossing_partitions"] + leak["dup_clusters_crossing_partitions"]
    return [f"- **Leakage check failed**: {leak['groups_crossing_partitions']} patient group(s) "
            f"and {leak['dup_clusters_crossing_partitions']} duplicate cluster(s) span two "
            "partitions; the test results are optimistic."] if crossing else []


def _subgroup_caveat(rows: list[dict]) -> list[str]:
    small = [r for r in rows if r["small"]]
    return [f"- {len(small)} subgroup level(s) are small (flagged in the subgroup table): their "
            "intervals are wide and their point estimates unreliable."] if small else []


def _gradcam_caveat(explain: dict) -> list[str]:
    if not applies(explain["localization"]):
        return [f"- Grad-CAM localization and faithfulness do not apply: "
                f"{explain['localization']['reason']}."]
    overall = explain["localization"]["true_class"]["overall"]
    if not overall["n"] or not defined(overall.get("pointing_game")):
        return []
    verdict = vs_chance(overall)
    if not verdict.startswith("above"):
        return [f"- Grad-CAM pointing game {with_interval(overall, 'pointing_game')} is "
                f"{verdict.split(' (')[0]} (chance level {num(overall['chance'])}): the maps do "
                "not show that the model looks at the lesion."]
    return []


def anomaly(summary: dict) -> dict:
    """The anomaly comparison (report and model card), or why anomaly detection did not apply."""
    if not applies(summary):
        return {"not_applicable": summary["reason"]}
    return comparison_context(summary["comparison"], summary["architectures"])
