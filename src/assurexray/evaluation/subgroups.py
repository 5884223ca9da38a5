"""Test metrics by subgroup (center, view, region, age band, sex) with bootstrap intervals.

Every test image lands in exactly one level of every factor (missing metadata is the level
'unknown'), so the levels of a factor add up to the test set. Small levels are kept and
flagged; a metric a level cannot define (a class absent) is null with the reason.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from assurexray.evaluation.bootstrap import Predictions, bootstrap_metrics
from assurexray.evaluation.operating_points import malignant_index

log = logging.getLogger(__name__)

FACTORS = ("center", "view", "region", "age_band", "sex")
METRICS = ("accuracy", "balanced_accuracy", "macro_auc", "malignant_sensitivity")
UNKNOWN = "unknown"
OUT_OF_RANGE = "out of range"


def age_band_labels(edges: list[int]) -> list[str]:
    """[0, 18, 40] -> ['0-17', '18-39']: bands [lo, hi) in whole years."""
    if len(edges) < 2 or any(b <= a for a, b in zip(edges, edges[1:])):
        raise ValueError(f"analysis.age_bands must be at least two increasing edges, got {edges}")
    return [f"{lo}-{hi - 1}" for lo, hi in zip(edges, edges[1:])]


def age_bands(ages: pd.Series, edges: list[int]) -> pd.Series:
    """Age text -> band label; '' or non-numeric -> 'unknown', beyond the edges -> 'out of range'."""
    labels = age_band_labels(edges)
    years = pd.to_numeric(ages, errors="coerce")
    bands = pd.cut(years, bins=edges, right=False, labels=labels).astype(object)
    bands[years.isna()] = UNKNOWN
    bands[years.notna() & bands.isna()] = OUT_OF_RANGE
    return bands


def subgroup_factors(index: pd.DataFrame, image_ids: np.ndarray,
                     age_edges: list[int]) -> pd.DataFrame:
    """One row per image (in ``image_ids`` order), one column per factor; '' -> 'unknown'."""
    rows = index.set_index("image_id")
    missing = pd.Index(image_ids).difference(rows.index)
    if len(missing):
        raise ValueError(f"index has no row for {len(missing)} predicted image(s), "
                         f"e.g. {missing[0]!r}")
    rows = rows.loc[image_ids]
    factors = rows[["center", "view", "region", "sex"]].astype(str).replace("", UNKNOWN)
    factors["age_band"] = age_bands(rows["age"], age_edges).to_numpy()
    return factors[list(FACTORS)].reset_index(drop=True)


def _levels(factor: str, values: pd.Series, age_edges: list[int]) -> list[str]:
    present = set(values)
    if factor == "age_band":
        order = age_band_labels(age_edges) + [OUT_OF_RANGE, UNKNOWN]
        return [level for level in order if level in present]
    return sorted(present, key=lambda v: (v == UNKNOWN, v))


def _flatten(metrics: dict, malignant: str) -> dict:
    picked = {name: metrics[name] for name in ("accuracy", "balanced_accuracy", "macro_auc")}
    picked["malignant_sensitivity"] = metrics["sensitivity"][malignant]
    row = {}
    for name, interval in picked.items():
        row[name] = interval["value"]
        row[f"{name}_ci_low"] = interval["ci_low"]
        row[f"{name}_ci_high"] = interval["ci_high"]
        # bootstrapped metrics count their valid resamples, proportions their count and n
        for extra in ("valid_resamples", "count", "n"):
            if extra in interval:
                row[f"{name}_{extra}"] = interval[extra]
    return row


def _reason(row: dict, y_true: np.ndarray, classes: list[str]) -> str:
    undefined = [name for name in METRICS if row[name] is None]
    if not undefined:
        return ""
    absent = [c for i, c in enumerate(classes) if not (y_true == i).any()]
    return f"{', '.join(undefined)} undefined: no {', '.join(absent)} images"


def subgroup_row(preds: Predictions, classes: list[str], n_iter: int, ci_level: float,
                 seed: int, min_size: int) -> dict:
    """n_images, n_groups, small flag, each metric with its interval, and why a metric is null."""
    metrics = bootstrap_metrics(preds, classes, n_iter, ci_level, seed)
    row = {"n_images": len(preds), "n_groups": len(np.unique(preds.groups)),
           "small": len(preds) < min_size, **_flatten(metrics, classes[malignant_index(classes)])}
    row["reason"] = _reason(row, preds.y_true, classes)
    return row


def subgroup_table(preds: Predictions, factors: pd.DataFrame, classes: list[str],
                   age_edges: list[int], n_iter: int, ci_level: float, seed: int,
                   min_size: int) -> pd.DataFrame:
    """One row for the whole test set (factor 'overall') and one per level of every factor."""
    rows = [{"factor": "overall", "level": "all",
             **subgroup_row(preds, classes, n_iter, ci_level, seed, min_size)}]
    for factor in FACTORS:
        for level in _levels(factor, factors[factor], age_edges):
            mask = (factors[factor] == level).to_numpy()
            row = subgroup_row(preds.subset(mask), classes, n_iter, ci_level, seed, min_size)
            if row["small"]:
                log.warning("subgroup %s=%s has %d images (< %d): interval unreliable",
                            factor, level, row["n_images"], min_size)
            rows.append({"factor": factor, "level": level, **row})
    return pd.DataFrame(rows)


def _or_none(value) -> float | None:
    return None if pd.isna(value) else float(value)


def summarize_subgroups(table: pd.DataFrame, min_size: int) -> dict:
    """Per factor: level counts and the macro AUC range over the levels that are not small
    (stable keys for `dvc exp show`)."""
    out = {"min_subgroup_size": min_size}
    for factor in FACTORS:
        levels = table[table["factor"] == factor]
        reliable = levels[~levels["small"] & levels["macro_auc"].notna()]
        worst = reliable.loc[reliable["macro_auc"].idxmin()] if len(reliable) else None
        out[factor] = {
            "levels": len(levels),
            "small_levels": int(levels["small"].sum()),
            "undefined_levels": int(levels["macro_auc"].isna().sum()),
            "macro_auc_min": None if worst is None else float(worst["macro_auc"]),
            "macro_auc_min_level": None if worst is None else str(worst["level"]),
            "macro_auc_max": _or_none(reliable["macro_auc"].max()),
        }
    return out


def plot_records(table: pd.DataFrame) -> list[dict]:
    """Macro AUC per subgroup for DVC plots (levels with a defined AUC only; the CSV has all)."""
    defined = table[table["macro_auc"].notna()]
    return [{"subgroup": f"{r.factor}={r.level}", "macro_auc": float(r.macro_auc),
             "ci_low": _or_none(r.macro_auc_ci_low), "ci_high": _or_none(r.macro_auc_ci_high),
             "n_images": int(r.n_images), "small": bool(r.small)} for r in defined.itertuples()]


def forest_plot(table: pd.DataFrame, path: str | Path) -> None:
    """Macro AUC with its interval per subgroup; small levels hollow, undefined ones 'n/a'."""
    fig = Figure(figsize=(7, 0.3 * len(table) + 1.2))
    ax = fig.add_subplot()
    ypos = np.arange(len(table))[::-1]
    for y, r in zip(ypos, table.itertuples()):
        if pd.isna(r.macro_auc):
            ax.text(0.5, y, "n/a", va="center", ha="center", color="grey", fontsize=8)
            continue
        low = r.macro_auc - r.macro_auc_ci_low if pd.notna(r.macro_auc_ci_low) else 0
        high = r.macro_auc_ci_high - r.macro_auc if pd.notna(r.macro_auc_ci_high) else 0
        ax.errorbar(r.macro_auc, y, xerr=[[low], [high]], fmt="o", capsize=3,
                    color="grey" if r.small else "tab:blue", mfc="white" if r.small else None)
    overall = table.loc[table["factor"] == "overall", "macro_auc"].iloc[0]
    if pd.notna(overall):
        ax.axvline(overall, color="tab:red", lw=0.8, ls="--", label="overall")
        ax.legend(loc="lower left", fontsize=8)
    ax.set_yticks(ypos, [f"{r.factor}={r.level} (n={r.n_images})" for r in table.itertuples()],
                  fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel("macro AUC (test) with bootstrap interval; hollow: small subgroup")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
