"""Frozen ImageNet features for the feature-based anomaly detectors (PatchCore, PaDiM).

The backbone and its weights come from the classifier's initial-weights registry
(``training.weights``): by default tf_efficientnet_lite0 with the ImageNet weights a package
ships, checked by SHA-256, never a download. Nothing is trained. A letterboxed grayscale image is
resized (area averaging, as everywhere) to the detector's size, repeated to three channels and
normalised with the statistics the weights expect. Levels are timm ``feature_info`` indices
(EfficientNet: level 2 has stride 8, level 3 stride 16).

``patch_features`` turns a layer set into one vector per patch: each level upsampled to the
finest level's grid, concatenated, then averaged over 3x3 neighbourhoods (PatchCore's local
aggregation, so a patch also sees its surroundings).

The anomaly_features stage extracts every level the detectors may use once per candidate size
for the train normals, validation and test (``save_features``; plain arrays, read back with
``allow_pickle=False``), so the candidates on validation and both detectors share one pass.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from assurexray.anomaly.data import AbnormalImageError, normal_index, normal_subset
from assurexray.errors import AssureXRayError
from assurexray.training.models import build_model, weights_source
from assurexray.training.weights import normalization

PARTS = ("train", "val", "test")   # train holds the train normals only


class FeatureFileError(AssureXRayError, ValueError):
    """A features file is missing, unreadable or lacks what a detector needs."""


class FeatureExtractor:
    """A frozen pretrained backbone returning the feature maps of chosen levels."""

    def __init__(self, backbone: str, init: str, weights_path: str | None, levels: Sequence[int]):
        self.model = build_model(backbone, 1, init=init, weights_path=weights_path,
                                 dropout=0.0).eval()
        mean, std = normalization(backbone)
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)
        self.levels = sorted(set(levels))
        self.source = {"backbone": backbone, **weights_source(self.model).to_dict()}

    def inputs(self, images: np.ndarray, size: int) -> torch.Tensor:
        """(N, 3, size, size) normalised network inputs of (N, S, S) uint8 letterboxed images."""
        x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32) / 255.0)[:, None]
        if x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="area")
        return ((x.expand(-1, 3, -1, -1) - self.mean) / self.std).contiguous(
            memory_format=torch.channels_last)   # faster depthwise convolutions on a CPU

    @torch.inference_mode()
    def __call__(self, images: np.ndarray, size: int, batch_size: int = 32
                 ) -> dict[int, torch.Tensor]:
        """{level: (N, C, h, w) float16} for uint8 images (N, S, S), in batches."""
        out: dict[int, list[torch.Tensor]] = {level: [] for level in self.levels}
        for start in range(0, len(images), batch_size):
            # timm's model classes type their methods loosely: the call is checked at run time
            maps = self.model.forward_intermediates(  # type: ignore[operator]
                self.inputs(images[start:start + batch_size], size), indices=self.levels,
                intermediates_only=True, stop_early=True)
            for level, fmap in zip(self.levels, maps):
                out[level].append(fmap.half().contiguous())
        return {level: torch.cat(parts) for level, parts in out.items()}


def split_features(extractor: FeatureExtractor, cache, splits: dict[str, tuple[list[str], np.ndarray]],
                   classes: Sequence[str], size: int, batch_size: int
                   ) -> tuple[dict[str, dict[int, torch.Tensor]], dict[str, list[str]]]:
    """({part: level maps}, {part: ids}) of the splits' cached images; of the train split only
    the normals are read (what a detector may learn from)."""
    splits = {**splits, "train": normal_subset(*splits["train"], normal_index(classes))}
    ids = {part: list(part_ids) for part, (part_ids, _) in splits.items()}
    maps = {part: extractor(np.stack([cache.images[cache.row_of(i)] for i in part_ids]), size,
                            batch_size) for part, part_ids in ids.items()}
    return maps, ids


def check_train_normals(ids: Sequence[str], split_ids: Sequence[str], labels: np.ndarray,
                        normal: int, path: Path) -> None:
    """A features file's train part must hold train-split normals only (no leak into a bank)."""
    label_of = dict(zip(split_ids, np.asarray(labels).tolist()))
    leaked = [i for i in ids if label_of.get(i) != normal]
    if leaked:
        raise AbnormalImageError(f"{path}: {len(leaked)} train feature row(s) are not train "
                                 f"normals, e.g. {leaked[:3]}; rerun anomaly_features")


def patch_features(maps: dict[int, torch.Tensor], layers: Sequence[int]) -> torch.Tensor:
    """(N, C, h, w) float32 patch features of ``layers`` on the finest layer's grid."""
    chosen = [maps[level].float() for level in sorted(layers)]
    grid = chosen[0].shape[-2:]
    joined = torch.cat([m if m.shape[-2:] == grid else
                        F.interpolate(m, size=grid, mode="bilinear", align_corners=False)
                        for m in chosen], dim=1)
    return F.avg_pool2d(joined, 3, stride=1, padding=1, count_include_pad=False)


def flatten_patches(features: torch.Tensor) -> torch.Tensor:
    """(N, C, h, w) -> (N * h * w, C), image by image, row by row."""
    return features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])


def save_features(path: Path, features: dict[str, dict[int, torch.Tensor]],
                  ids: dict[str, list[str]], meta: dict) -> None:
    """One uncompressed npz per image size: ids_<part>, level<L>_<part> (float16), meta (JSON)."""
    arrays = {"meta": np.array(json.dumps(meta))}
    for part, maps in features.items():
        arrays[f"ids_{part}"] = np.array(ids[part], dtype=str)
        arrays.update({f"level{level}_{part}": m.numpy() for level, m in maps.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, allow_pickle=False, **arrays)
    tmp.replace(path)


def load_features(path: Path, levels: Sequence[int]
                  ) -> tuple[dict[str, dict[int, torch.Tensor]], dict[str, list[str]], dict]:
    """({part: {level: maps}}, {part: ids}, meta) of a features file, no pickle allowed."""
    if not path.is_file():
        raise FeatureFileError(f"{path}: features file not found; run the anomaly_features stage")
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            ids = {p: [str(i) for i in data[f"ids_{p}"]] for p in PARTS}
            maps = {p: {lv: torch.from_numpy(data[f"level{lv}_{p}"]) for lv in levels}
                    for p in PARTS}
    except KeyError as exc:
        raise FeatureFileError(f"{path}: lacks {exc}; rerun anomaly_features with the levels "
                               "the detectors use") from exc
    except (OSError, ValueError) as exc:
        raise FeatureFileError(f"{path}: not a readable features file ({exc})") from exc
    return maps, ids, meta
