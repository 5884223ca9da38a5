"""Classifier construction through timm, local weight loading and Grad-CAM target layers."""
from __future__ import annotations

import logging
from pathlib import Path

import timm
import torch
from timm.models.convnext import ConvNeXt
from timm.models.densenet import DenseNet
from timm.models.efficientnet import EfficientNet
from timm.models.mobilenetv3 import MobileNetV3
from timm.models.resnet import ResNet
from torch import nn

from assurexray.errors import AssureXRayError

log = logging.getLogger(__name__)


class PretrainedWeightsError(AssureXRayError, RuntimeError):
    """ImageNet weights were asked for but could not be fetched (offline, hub down)."""


class WeightsFileError(AssureXRayError, ValueError):
    """A local weights file is missing, unreadable or does not fit the backbone."""


def build_model(backbone: str, num_classes: int, pretrained: bool = False,
                weights_path: str | Path | None = None, dropout: float = 0.2) -> nn.Module:
    """A timm classifier taking (N, 3, H, W) and returning (N, num_classes) logits.

    ``weights_path`` (a local state dict) takes precedence over ``pretrained`` (timm's hub
    download), so an offline machine can still start from ImageNet weights.
    """
    if not timm.is_model(backbone):
        raise ValueError(f"unknown backbone {backbone!r}: not a timm model name "
                         "(see timm.list_models())")
    from_hub = pretrained and weights_path is None
    try:
        model = timm.create_model(backbone, pretrained=from_hub, num_classes=num_classes,
                                  drop_rate=dropout, in_chans=3)
    except (OSError, RuntimeError) as exc:
        if not from_hub:
            raise
        raise PretrainedWeightsError(
            f"could not fetch pretrained weights for {backbone!r} ({exc}). Either set "
            "model.pretrained: false to train from scratch, or download the weights on a "
            "machine with network access and set model.weights_path to the local file") from exc
    if not (from_hub and model.pretrained_cfg.get("num_classes") == num_classes):
        init_head(model)
    if weights_path is not None:
        load_weights(model, weights_path)
    model.backbone_name = backbone
    return model


def init_head(model: nn.Module) -> None:
    """Small initial logits for a new classifier head.

    timm's from-scratch EfficientNet head init (uniform +-1/sqrt(num_classes)) starts with
    logits of several units and gradient norms above 100; trained from scratch on about a
    thousand radiographs that diverged. Weights N(0, 0.01) and zero bias start near uniform
    probabilities while keeping gradients (and Grad-CAM maps) non-zero.
    """
    head = model.get_classifier()
    nn.init.normal_(head.weight, std=0.01)
    nn.init.zeros_(head.bias)


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load a local state dict: strict on the backbone, the classifier head kept fresh when
    its shape differs (ImageNet's 1000 classes vs ours)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsFileError(f"{path}: weights file not found (model.weights_path)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a corrupt or unsafe file
        raise WeightsFileError(f"{path}: not a loadable state dict ({exc})") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # one of our checkpoints: start from its weights
    own = model.state_dict()
    head = model.pretrained_cfg["classifier"] + "."
    reset = [k for k in state if k.startswith(head) and k in own and state[k].shape != own[k].shape]
    state = {k: v for k, v in state.items() if k not in reset}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatch inside the backbone
        raise WeightsFileError(f"{path}: does not fit backbone: {exc}") from exc
    bad_missing = [k for k in missing if not k.startswith(head)]
    if bad_missing or unexpected:
        raise WeightsFileError(f"{path}: does not fit the backbone; missing keys "
                               f"{bad_missing[:5]}, unexpected keys {unexpected[:5]}")
    if reset or missing:
        log.info("%s: classifier head '%s' kept freshly initialised", path, head[:-1])


def cam_target_layer(model: nn.Module) -> nn.Module:
    """The Grad-CAM target layer: a late layer with a spatial (N, C, h, w) output."""
    if isinstance(model, EfficientNet):
        # The second-to-last block stage (stride 32, before the last stage and the 1x1 head):
        # on the default twin its CAM hit the lesion box 2x as often as bn2's (0.33 vs 0.17
        # pointing game on correct tumour images, chance 0.05); the head's maps follow the
        # strongest class evidence rather than each lesion.
        return model.blocks[-2]
    if isinstance(model, MobileNetV3):
        return model.blocks[-1]  # conv_head runs after global pooling here: not spatial
    if isinstance(model, ResNet):
        return model.layer4[-1]
    if isinstance(model, DenseNet):
        return model.features.norm5
    if isinstance(model, ConvNeXt):
        return model.stages[-1]
    name = getattr(model, "backbone_name", type(model).__name__)
    raise ValueError(f"no Grad-CAM target layer known for backbone {name!r}; supported "
                     "families: efficientnet*, mobilenetv3*, resnet*, densenet*, convnext*")


def default_device() -> torch.device:
    """CUDA when present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
