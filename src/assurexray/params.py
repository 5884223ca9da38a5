"""Validated parameters: one loader for params.yaml.

DVC's ``-S key=value`` silently adds a mistyped key, so every key is checked here against a
dataclass schema: an unknown key, a missing key or a wrong type stops with the key's dotted name.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from assurexray.errors import AssureXRayError


class ParamsError(AssureXRayError, ValueError):
    """params.yaml does not match the schema; the message names the offending key."""


@dataclass(frozen=True)
class SyntheticParams:
    n_images: int = 1200
    defects: bool = True
    min_side: int = 320
    max_side: int = 720


@dataclass(frozen=True)
class BtxrdParams:
    url: str = "https://ndownloader.figshare.com/files/50653575"
    size: int = 840474929
    md5: str = "59132a5036d030580ccade8add8f13df"
    sha256: str = "e7c800c3b4e090262b160525a0765f9d93bcc53d639c03806a3ac47b0ded3373"
    cache_dir: str | None = None


@dataclass(frozen=True)
class BtxrdDirParams:
    path: str | None = None


@dataclass(frozen=True)
class ManifestParams:
    path: str | None = None


@dataclass(frozen=True)
class DataParams:
    source: Literal["synthetic", "btxrd", "btxrd_dir", "manifest"] = "synthetic"
    synthetic: SyntheticParams = field(default_factory=SyntheticParams)
    btxrd: BtxrdParams = field(default_factory=BtxrdParams)
    btxrd_dir: BtxrdDirParams = field(default_factory=BtxrdDirParams)
    manifest: ManifestParams = field(default_factory=ManifestParams)


@dataclass(frozen=True)
class AuditParams:
    near_duplicate_hamming: int = 4
    max_image_pixels: int = 200_000_000
    workers: int = 1


@dataclass(frozen=True)
class SplitOptions:
    fractions: list[float] = field(default_factory=lambda: [0.70, 0.15, 0.15])
    train_centers: list[int] = field(default_factory=lambda: [1])
    center_val_fraction: float = 0.15


@dataclass(frozen=True)
class PreprocessParams:
    cache_size: int = 256
    workers: int = 2


@dataclass(frozen=True)
class ModelParams:
    backbone: str = "efficientnet_b0"
    pretrained: bool = False
    weights_path: str | None = None
    dropout: float = 0.2


@dataclass(frozen=True)
class TrainParams:
    image_size: int = 128
    batch_size: int = 16
    epochs: int = 15
    lr: float = 0.002
    weight_decay: float = 0.01
    warmup_epochs: int = 1
    patience: int = 6
    loss: Literal["weighted_ce", "ce", "focal"] = "weighted_ce"
    focal_gamma: float = 2.0
    clahe: bool = False
    deterministic: bool = True
    num_workers: int = 0
    devices: int = 1            # > 1: DDP through torchrun, one process per device
    precision: Literal["fp16", "bf16", "fp32"] = "fp16"  # GPU autocast; CPU always fp32
    channels_last: bool = True  # GPU only

    def __post_init__(self):
        if self.devices < 1:
            raise ParamsError(f"'train.devices' must be >= 1, got {self.devices}")
        if self.batch_size % self.devices:
            raise ParamsError(f"'train.batch_size' ({self.batch_size}) is the global batch and "
                              f"must be a multiple of 'train.devices' ({self.devices})")


@dataclass(frozen=True)
class EvaluateParams:
    batch_size: int = 64


@dataclass(frozen=True)
class ExplainParams:
    method: Literal["gradcam", "gradcam++", "hirescam", "eigencam"] = "gradcam"
    per_class: int = 3
    cam_threshold: float = 0.5
    road_percentiles: list[int] = field(default_factory=lambda: [20, 40, 60, 80])
    road_images: int = 24
    batch_size: int = 16


@dataclass(frozen=True)
class AnalysisParams:
    bootstrap_iterations: int = 1000
    ci_level: float = 0.95
    calibration_bins: int = 15
    sensitivity_target: float = 0.90
    specificity_target: float = 0.90
    age_bands: list[int] = field(default_factory=lambda: [0, 18, 40, 65, 120])
    min_subgroup_size: int = 20


@dataclass(frozen=True)
class RobustnessParams:
    severities: int = 3


@dataclass(frozen=True)
class SearchDim:
    """One tuned key: a float or int range (``log`` for a log scale) or a list of choices."""
    type: Literal["float", "int", "choice"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: list[str | int | float | bool] | None = None

    def check(self, key: str) -> None:
        if self.type == "choice":
            if not self.choices:
                raise ParamsError(f"'{key}.choices' must list at least one value")
            return
        if self.low is None or self.high is None or not self.low < self.high:
            raise ParamsError(f"'{key}' needs low < high, got {self.low}..{self.high}")
        if self.log and self.low <= 0:
            raise ParamsError(f"'{key}': a log range needs low > 0, got {self.low}")
        if self.type == "int" and not (float(self.low).is_integer()
                                       and float(self.high).is_integer()):
            raise ParamsError(f"'{key}': an int range needs whole low and high")


@dataclass(frozen=True)
class TuneParams:
    sampler: Literal["tpe", "random"] = "tpe"
    metric: str = "best_val_macro_auc"  # a key of metrics_file: validation, never test
    metrics_file: str = "dvclive/train/metrics.json"
    target: str = "train"               # the stage each trial reproduces up to
    space: dict[str, SearchDim] = field(default_factory=lambda: {
        "train.lr": SearchDim("float", 0.0003, 0.005, log=True),
        "train.weight_decay": SearchDim("float", 0.001, 0.1, log=True),
        "model.dropout": SearchDim("float", 0.0, 0.5)})

    def __post_init__(self):
        for key, dim in self.space.items():
            if key.split(".")[0] == "tune" or not _is_param_path(Params, key.split(".")):
                raise ParamsError(f"'tune.space.{key}' does not name a tunable key of params.yaml")
            dim.check(f"tune.space.{key}")


def _is_param_path(cls, parts: list[str]) -> bool:
    hints = typing.get_type_hints(cls)
    if parts[0] not in hints:
        return False
    inner = hints[parts[0]]
    if len(parts) == 1:
        return not dataclasses.is_dataclass(inner)
    return dataclasses.is_dataclass(inner) and _is_param_path(inner, parts[1:])


@dataclass(frozen=True)
class Params:
    seed: int = 42
    split: Literal["stratified", "center"] = "stratified"
    data: DataParams = field(default_factory=DataParams)
    audit: AuditParams = field(default_factory=AuditParams)
    split_options: SplitOptions = field(default_factory=SplitOptions)
    preprocess: PreprocessParams = field(default_factory=PreprocessParams)
    model: ModelParams = field(default_factory=ModelParams)
    train: TrainParams = field(default_factory=TrainParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    explain: ExplainParams = field(default_factory=ExplainParams)
    analysis: AnalysisParams = field(default_factory=AnalysisParams)
    robustness: RobustnessParams = field(default_factory=RobustnessParams)
    tune: TuneParams = field(default_factory=TuneParams)


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate a params file; raise ParamsError naming the first bad key."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as exc:
        raise ParamsError(f"{path}: not found; run from the repository root") from exc
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from exc
    return from_dict(Params, raw)


def from_dict(cls, raw, prefix: str = ""):
    """Build dataclass ``cls`` from a mapping, checking every key and value type."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{prefix or 'params'}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in names:
            raise ParamsError(
                f"unknown key '{prefix}{key}' (allowed here: {', '.join(sorted(names))})")
    values = {}
    for f in dataclasses.fields(cls):
        if f.name in raw:
            values[f.name] = _coerce(hints[f.name], raw[f.name], f"{prefix}{f.name}")
    return cls(**values)


def _coerce(tp, value, key: str):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key + ".")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        for candidate in inner[:-1]:  # the first member the value fits
            try:
                return _coerce(candidate, value, key)
            except ParamsError:
                pass
        return _coerce(inner[-1], value, key)
    if origin is Literal:
        if value not in args:
            raise ParamsError(f"'{key}' must be one of {list(args)}, got {value!r}")
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise ParamsError(f"'{key}' must be a mapping, got {value!r}")
        return {str(k): _coerce(args[1], v, f"{key}.{k}") for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list):
            raise ParamsError(f"'{key}' must be a list, got {value!r}")
        return [_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, bool) or not isinstance(value, tp):
        raise ParamsError(f"'{key}' must be {tp.__name__}, got {value!r} ({type(value).__name__})")
    return value


def to_dict(params) -> dict:
    """Plain-dict view (for checkpoints and reports)."""
    return dataclasses.asdict(params)
