"""Validated parameters: one loader for params.yaml.

DVC's ``-S key=value`` silently adds a mistyped key, so every key is checked here against a
dataclass schema: an unknown key or a wrong type stops with the key's dotted name, and so does a
value out of its range or against another key (``param_checks``). A key missing from the file
takes the default written in its dataclass below (the value params.yaml ships with).
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from assurexray.checked_dataclasses import ParamsError, from_dict


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
    backbone: str = "tf_efficientnet_lite0"
    init: Literal["scratch", "package", "file", "hub"] = "package"
    weights_path: str | None = None
    dropout: float = 0.2


@dataclass(frozen=True)
class TrainParams:
    image_size: int = 128
    batch_size: int = 16
    epochs: int = 8
    lr: float = 0.002
    weight_decay: float = 0.01
    warmup_epochs: int = 1
    patience: int = 3
    loss: Literal["weighted_ce", "ce", "focal"] = "weighted_ce"
    focal_gamma: float = 2.0
    clahe: bool = False
    deterministic: bool = True
    num_workers: int = 0
    threads: int = 0            # runtime: CPU threads per process; 0 = every core (its share under DDP)
    seed: int | None = None  # training's own seed (init, batches, augmentation); null = top-level
    devices: int = 1            # > 1: DDP through torchrun, one process per device
    precision: Literal["fp16", "bf16", "fp32"] = "fp16"  # GPU autocast; CPU always fp32
    channels_last: bool = True  # CPU and GPU: the faster layout



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


# Settings of speed, not of results: no dvc.yaml stage lists them, so changing one reruns
# nothing (tests/test_reproducibility.py). Worker counts give identical outputs; the inference
# batch size moves logits only in the last float bits. explain.batch_size is NOT one of them:
# ROAD draws its imputation noise per batch.
# Keys (or whole sections) no stage tracks: they change how fast or where things run, not a
# result. The serve section configures the service and tune the search, which no stage runs.
RUNTIME_KEYS = ("audit.workers", "preprocess.workers", "train.num_workers", "train.threads",
                "evaluate.batch_size",
                "serve.max_batch", "serve.max_pixels", "serve.max_decoded_mb", "serve.upload_slots",
                "serve.decode_slots",
                "serve.max_upload_mb", "serve.micro_batch", "serve.micro_batch_wait_ms",
                "serve.queue_size", "serve.request_timeout_s", "inference", "tune")


@dataclass(frozen=True)
class ReferenceParams:
    embedding_dims: int = 32          # PCA dimensions (fitted on train) kept for the embedding-drift test
    sample_size: int = 300            # validation embeddings kept for that test (all if fewer)
    batch_size: int = 64


@dataclass(frozen=True)
class OodParams:
    false_alarm_rate: float = 0.05    # share of validation images flagged (sets the threshold)
    min_side: int = 24                # geometry rejected before the model
    max_aspect: float = 6.0
    min_std: float = 2.0              # grey-level standard deviation below which an image is blank
    images_per_set: int = 100         # generated out-of-distribution images per set


@dataclass(frozen=True)
class InferenceParams:
    # What runs the forward pass of predict, the service, drift and the reference stage
    # (inference.engines.ENGINES); onnxruntime falls back to torch, saying why.
    engine: Literal["onnxruntime", "torch"] = "onnxruntime"


@dataclass(frozen=True)
class ServeParams:
    max_batch: int = 16               # files per /batch_predict request
    max_upload_mb: float = 20.0
    max_pixels: int = 50_000_000      # decompression-bomb limit for uploads
    max_decoded_mb: float = 64.0      # memory of one upload's decoded pixels (422 above)
    upload_slots: int = 16            # uploads in memory at once, in /predict-size units (503 above)
    decode_slots: int = 2             # images decoded at once
    drift_window: int = 100
    drift_alpha: float = 0.05
    drift_permutations: int = 1000    # embedding test; param_checks says how many it needs
    micro_batch: int = 8              # requests sharing one forward pass
    micro_batch_wait_ms: float = 20.0
    queue_size: int = 64              # waiting requests before 503
    request_timeout_s: float = 30.0


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
class AnomalyFeatureParams:
    """Pretrained-feature detectors: the frozen backbone and the grid chosen on validation."""
    backbone: str = "tf_efficientnet_lite0"
    init: Literal["scratch", "package", "file", "hub"] = "package"
    weights_path: str | None = None
    image_sizes: list[int] = field(default_factory=lambda: [256])
    layer_sets: list[list[int]] = field(default_factory=lambda: [[3], [2, 3]])  # feature_info levels
    aggregations: list[Literal["max", "topk"]] = field(default_factory=lambda: ["max", "topk"])
    topk_percent: float = 1.0    # topk image score: mean of the top k% patch scores
    batch_size: int = 32


@dataclass(frozen=True)
class PatchCoreParams:
    coreset_ratios: list[float] = field(default_factory=lambda: [0.01])  # of the train patches
    neighbours: list[int] = field(default_factory=lambda: [1, 3])        # k of the k-NN distance
    coreset_pool: int = 500000   # greedy selection runs on at most this many patches (a random pool)
    projection_dim: int = 32     # random projection for the greedy selection's distances
    max_bank_mb: float = 50.0    # candidates whose memory bank exceeds this are not fitted


@dataclass(frozen=True)
class PaDiMParams:
    dims: int = 64               # random channel subset per patch
    covariance_eps: float = 0.01  # added to the covariance's diagonal


@dataclass(frozen=True)
class AnomalyParams:
    archs: list[Literal["unet", "reversed"]] = field(default_factory=lambda: ["unet", "reversed"])
    detectors: list[Literal["patchcore", "padim"]] = field(
        default_factory=lambda: ["patchcore", "padim"])
    features: AnomalyFeatureParams = field(default_factory=AnomalyFeatureParams)
    patchcore: PatchCoreParams = field(default_factory=PatchCoreParams)
    padim: PaDiMParams = field(default_factory=PaDiMParams)
    image_size: int = 64
    train: AnomalyTrainParams = field(default_factory=AnomalyTrainParams)
    unet: UNetAEParams = field(default_factory=UNetAEParams)
    reversed: ReversedAEParams = field(default_factory=ReversedAEParams)
    score: AnomalyScoreParams = field(default_factory=AnomalyScoreParams)
    batch_size: int = 64         # scoring batches
    gallery: int = 3             # gallery: the k highest-scoring tumours and normals, k lowest tumours
    identity_lesions: int = 32   # identity check: validation normals given a drawn lesion


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
    reference: ReferenceParams = field(default_factory=ReferenceParams)
    ood: OodParams = field(default_factory=OodParams)
    serve: ServeParams = field(default_factory=ServeParams)
    inference: InferenceParams = field(default_factory=InferenceParams)
    anomaly: AnomalyParams = field(default_factory=AnomalyParams)
    tune: TuneParams = field(default_factory=TuneParams)


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate a params file; raise ParamsError naming the first bad key.

    An unknown key, a wrong type or a value out of range (``check_ranges``) raises. A missing
    key (or a whole missing section) silently takes its dataclass default, which equals the
    value in the shipped params.yaml; note that DVC then tracks nothing for it, so set a key
    in the file before changing it with ``dvc exp run -S``.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as exc:
        raise ParamsError(f"{path}: not found; run from the repository root") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ParamsError(f"{path}: cannot read the params file: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from exc
    params = from_dict(Params, raw)
    from assurexray.param_checks import check_ranges  # it reads this module's schema
    check_ranges(params)
    return params


def to_dict(params) -> dict:
    """Plain-dict view (for checkpoints and reports)."""
    return dataclasses.asdict(params)
