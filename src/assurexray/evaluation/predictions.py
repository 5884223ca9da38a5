"""The predictions table: one partition's model outputs, written and read back as CSV.

Torch-free on purpose, so the analysis and calibration stages read predictions without
importing the model code.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import softmax


@dataclass(frozen=True)
class SplitPredictions:
    """One partition's model outputs: ids, true class indices, logits (N, K) in class order."""
    image_ids: np.ndarray
    classes: list[str]
    y_true: np.ndarray
    logits: np.ndarray

    def probs(self, temperature: float = 1.0) -> np.ndarray:
        return softmax(self.logits / temperature, axis=1)

    @property
    def y_pred(self) -> np.ndarray:
        return self.logits.argmax(axis=1)

    def to_frame(self) -> pd.DataFrame:
        """The predictions CSV layout: image_id, true, pred, prob_<class>..., logit_<class>..."""
        names = np.asarray(self.classes)
        frame = pd.DataFrame({"image_id": self.image_ids, "true": names[self.y_true],
                              "pred": names[self.y_pred]})
        probs = self.probs()
        for i, c in enumerate(self.classes):
            frame[f"prob_{c}"] = probs[:, i]
        for i, c in enumerate(self.classes):
            frame[f"logit_{c}"] = self.logits[:, i]
        return frame


def read_predictions(path: str | Path) -> SplitPredictions:
    """Read a predictions CSV back; classes come from the logit_<class> columns, in order."""
    df = pd.read_csv(path, dtype={"image_id": str, "true": str, "pred": str},
                     keep_default_na=False)
    logit_cols = [c for c in df.columns if c.startswith("logit_")]
    classes = [c[len("logit_"):] for c in logit_cols]
    if not classes or not {"image_id", "true"} <= set(df.columns):
        raise ValueError(f"{path}: not a predictions table "
                         "(needs image_id, true, logit_<class>...)")
    unknown = sorted(set(df["true"]) - set(classes))
    if unknown:
        raise ValueError(f"{path}: true labels {unknown} are not among the classes {classes}")
    duplicated = df["image_id"][df["image_id"].duplicated()]
    if len(duplicated):
        raise ValueError(f"{path}: duplicated image_id {duplicated.iloc[0]!r}")
    logits = df[logit_cols].to_numpy(float)
    if not np.isfinite(logits).all():
        raise ValueError(f"{path}: non-finite logits")
    lookup = {c: i for i, c in enumerate(classes)}
    return SplitPredictions(df["image_id"].to_numpy(), classes,
                            df["true"].map(lookup).to_numpy(int), logits)
