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
    # The folder (or file) holding the user's data: a DVC dependency of prepare, audit and
    # preprocess (dvc.yaml interpolates it), so an edited label or image reruns them.
    tracked_path: str = "data/external"


@dataclass(frozen=True)
class AuditParams:
    near_duplicate_hamming: int = 4
    max_image_pixels: int = 200_000_000
    workers: int = 1


@dataclass(frozen=True)
class SplitOptions:
    fractions: list[float] = field(default_factory=lambda: [0.70, 0.15, 0.15])
    # centers as the index names them: site names or numbers (BTXRD numbers its centers)
    train_centers: list[int | str] = field(default_factory=lambda: [1])
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
    road_bootstrap: int = 1000
    layer_images: int = 48
    batch_size: int = 16


@dataclass(frozen=True)
class AnalysisParams:
    bootstrap_iterations: int = 1000
    ci_level: float = 0.95
    calibration_bins: int = 15
    sensitivity_target: float = 0.90
    specificity_target: float = 0.90
    # The operating point `predict` decides with (stored in models/calibrated.pt).
    decision_point: Literal["youden", "sensitivity_target", "specificity_target"] = "youden"
    age_bands: list[int] = field(default_factory=lambda: [0, 18, 40, 65, 120])
    min_subgroup_size: int = 20


@dataclass(frozen=True)
class RobustnessParams:
    severities: int = 3


@dataclass(frozen=True)
class UNetAEParams:
    """U-Net autoencoder: ``depth`` poolings from ``base_channels``; ``latent`` > 0 squeezes
    the deepest map through a dense bottleneck of that size (0: convolutional bottleneck)."""
    base_channels: int = 8
    depth: int = 3
    latent: int = 64
    skip_dropout: float = 0.0        # drop whole skip maps during training (shortcut remedy)
    drop_skips: list[int] = field(default_factory=list)  # skip levels removed; 0 = full resolution
    noise_std: float = 0.0           # denoising AE: coarse noise added to the input (0 = off)


@dataclass(frozen=True)
class ReversedAEParams:
    """Reversed autoencoder: strided encoder, dense latent, shallower decoder, no skips."""
    base_channels: int = 8
    depth: int = 3
    latent: int = 64
    noise_std: float = 0.0


@dataclass(frozen=True)
class AnomalyTrainParams:
    batch_size: int = 16
    epochs: int = 8
    lr: float = 0.005
    weight_decay: float = 0.0
    warmup_epochs: int = 0
    patience: int = 3            # epochs without val reconstruction-loss gain before stopping
    noise_cells: int = 8         # coarse noise is drawn on a cells x cells grid, then upsampled
    deterministic: bool = True
    num_workers: int = 0


@dataclass(frozen=True)
class AnomalyScoreParams:
    primary: Literal["mse", "ssim", "topk"] = "mse"
    topk_percent: float = 5.0    # mean of the top k% pixel errors
    smoothing_sigma: float = 2.0  # anomaly map: Gaussian-smoothed per-pixel error (model px)
    ssim_window: int = 7


@dataclass(frozen=True)
class AnomalyParams:
    archs: list[Literal["unet", "reversed"]] = field(default_factory=lambda: ["unet", "reversed"])
    image_size: int = 64
    train: AnomalyTrainParams = field(default_factory=AnomalyTrainParams)
    unet: UNetAEParams = field(default_factory=UNetAEParams)
    reversed: ReversedAEParams = field(default_factory=ReversedAEParams)
    score: AnomalyScoreParams = field(default_factory=AnomalyScoreParams)
    batch_size: int = 64         # scoring batches
    gallery: int = 3             # gallery: the k highest-scoring tumours and normals, k lowest tumours
    identity_lesions: int = 32   # identity check: validation normals given a drawn lesion


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
    anomaly: AnomalyParams = field(default_factory=AnomalyParams)


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
        errors = []
        for option in inner:
            try:
                return _coerce(option, value, key)
            except ParamsError as exc:
                errors.append(exc)
        if len(inner) == 1:
            raise errors[0]
        names = " or ".join(getattr(a, "__name__", str(a)) for a in inner)
        raise ParamsError(f"'{key}' must be {names}, got {value!r} ({type(value).__name__})")
    if origin is Literal:
        if value not in args:
            raise ParamsError(f"'{key}' must be one of {list(args)}, got {value!r}")
        return value
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
