"""Model construction, local weights, Grad-CAM target layers and the checkpoint contract."""
import pickle
from dataclasses import asdict, replace

import pytest
import timm
import torch
from torch import nn

from assurexray.training.checkpoint import (
    PROVENANCE_META,
    CheckpointError,
    CheckpointMeta,
    load_checkpoint,
    save_checkpoint,
)
from assurexray.training.models import (
    Family,
    PretrainedWeightsError,
    WeightsFileError,
    build_model,
    cam_layer_name,
    cam_reshape_transform,
    cam_target_layer,
    model_family,
    register_family,
    weights_source,
)
from assurexray.training.weights import WeightsSource, sha256

# The hand-tuned CAM layers of the CNN families; the registry must keep choosing exactly these
# (the efficientnet one is the default run's, so its localization figures stay the same).
HAND_TUNED = {"efficientnet_b0": lambda m: m.blocks[-2], "resnet18": lambda m: m.layer4[-1],
              "densenet121": lambda m: m.features.norm5, "convnext_atto": lambda m: m.stages[-1],
              "mobilenetv3_small_100": lambda m: m.blocks[-1]}


@pytest.fixture(scope="module")
def batch():
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("backbone", HAND_TUNED)
def test_registered_families_keep_their_cam_layer(backbone):
    model = build_model(backbone, num_classes=3)
    assert model.backbone_name == backbone
    assert cam_target_layer(model) is HAND_TUNED[backbone](model)
    assert cam_reshape_transform(model) is None


def test_efficientnet_layer_name_and_transformer_transforms():
    assert cam_layer_name(build_model("efficientnet_b0", 3)) == "blocks.5"
    vit = build_model("vit_tiny_patch16_224", 3)
    assert (model_family(vit).name, cam_layer_name(vit)) == ("vit", "blocks.11.norm1")
    tokens = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)   # class token + 2x2
    grid = cam_reshape_transform(vit)(tokens)
    assert grid.shape == (2, 3, 2, 2) and torch.equal(grid[:, :, 0, 1], tokens[:, 2])
    with pytest.raises(ValueError, match="square grid"):
        cam_reshape_transform(vit)(tokens[:, :4])


def test_unregistered_timm_family_falls_back_to_feature_info():
    model = build_model("regnetx_002", 3)
    assert model_family(model) is None
    assert cam_layer_name(model) == model.feature_info[-1]["module"] == "s4"
    assert cam_target_layer(model) is model.s4


def test_family_names_are_unique():
    with pytest.raises(ValueError, match="already registered"):
        register_family(Family("resnet", nn.Conv2d, "weight"))


def test_new_head_starts_near_uniform():
    """timm's own EfficientNet head gives train-mode logits of several units here."""
    torch.manual_seed(0)
    images = torch.randn(8, 3, 64, 64)
    model = build_model("efficientnet_b0", num_classes=3).train()
    with torch.no_grad():
        assert model(images).abs().max() < 1.0
    assert model.classifier.bias.abs().sum() == 0


def test_unsupported_and_unknown_backbones():
    with pytest.raises(ValueError, match="no Grad-CAM target layer"):
        cam_target_layer(nn.Sequential(nn.Conv2d(3, 4, 3)))
    with pytest.raises(ValueError, match="unknown backbone 'not_a_net'"):
        build_model("not_a_net", 3)


def test_pretrained_offline_names_both_options(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(timm.models._builder, "load_pretrained", offline)
    with pytest.raises(PretrainedWeightsError) as info:
        build_model("resnet18", 3, init="hub")
    message = str(info.value)
    assert "model.init: package" in message and "model.weights_path" in message


def test_weights_path_keeps_backbone_and_resets_head(tmp_path, monkeypatch):
    source = timm.create_model("resnet18", num_classes=1000)
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    monkeypatch.setattr(timm.models._builder, "load_pretrained",
                        lambda *a, **k: pytest.fail("weights_path must not hit the hub"))
    model = build_model("resnet18", 3, init="file", weights_path=path)
    assert torch.equal(model.layer4[1].conv2.weight, source.layer4[1].conv2.weight)
    assert model.fc.weight.shape == (3, 512)
    assert weights_source(model) == WeightsSource("file", file=str(path), sha256=sha256(path))


def test_weights_path_errors(tmp_path):
    with pytest.raises(WeightsFileError, match="not found"):
        build_model("resnet18", 3, init="file", weights_path=tmp_path / "missing.pth")
    with pytest.raises(WeightsFileError, match="needs model.weights_path"):
        build_model("resnet18", 3, init="file")
    other = tmp_path / "effnet.pth"
    torch.save(timm.create_model("efficientnet_b0").state_dict(), other)
    with pytest.raises(WeightsFileError, match="does not fit"):
        build_model("resnet18", 3, init="file", weights_path=other)


META = CheckpointMeta(
    backbone="resnet18", classes=["Normal", "Benign", "Malignant"], image_size=32, cache_size=64,
    mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225], dropout=0.2,
    params={"seed": 1, "train": {"lr": 0.01}}, split="stratified", epoch=3, best_val_macro_auc=0.8)
# A meta as the previous code wrote it: a dict without temperature.
LEGACY = {k: v for k, v in asdict(META).items() if k != "temperature"}


def test_checkpoint_round_trip(tmp_path, batch):
    model = build_model("resnet18", 3).eval()
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, META)
    loaded, meta = load_checkpoint(path)
    assert not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(batch), model(batch))
    assert replace(meta, git_rev=None, git_dirty=None, created_at=None) == META
    assert meta.git_rev and meta.created_at and meta.temperature is None
    # Stored as plain data: the dataclass as a dict, without the provenance (in the sidecar).
    stored = torch.load(path, weights_only=True)["meta"]
    assert stored == {k: v for k, v in asdict(META).items() if k not in PROVENANCE_META}


def test_calibrated_and_legacy_meta_load(tmp_path):
    model = build_model("resnet18", 3)
    save_checkpoint(tmp_path / "calibrated.pt", model, replace(META, temperature=1.5))
    assert load_checkpoint(tmp_path / "calibrated.pt")[1].temperature == 1.5
    torch.save({"state_dict": model.state_dict(), "meta": LEGACY}, tmp_path / "legacy.pt")
    assert load_checkpoint(tmp_path / "legacy.pt")[1] == META


@pytest.mark.parametrize("meta, message", [
    ({"backbone": "resnet18"}, r"meta lacks \['classes', 'image_size'"),
    ({**LEGACY, "colour": "red"}, "unknown key 'meta.colour'"),
    ({**LEGACY, "epoch": "3"}, "'meta.epoch' must be int"),
    ([1, 2], "meta is a list, not a mapping"),
])
def test_checkpoint_meta_errors_name_file_and_key(tmp_path, meta, message):
    path = tmp_path / "bad.pt"
    torch.save({"state_dict": build_model("resnet18", 3).state_dict(), "meta": meta}, path)
    with pytest.raises(CheckpointError, match=f"bad.pt: .*{message}"):
        load_checkpoint(path)


def test_checkpoint_rejects_unsafe_corrupt_and_missing_files(tmp_path):
    model = build_model("resnet18", 3)
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"state_dict": model.state_dict(), "meta": LEGACY, "payload": Exploit()}, unsafe)
    with pytest.raises(CheckpointError, match="Weights only load failed"):
        load_checkpoint(unsafe)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a zip archive")
    with pytest.raises(CheckpointError, match="corrupt.pt"):
        load_checkpoint(corrupt)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")


def test_save_refuses_meta_that_would_not_load(tmp_path):
    import numpy as np

    model = build_model("resnet18", 3)
    with pytest.raises(CheckpointError, match=r"meta\.best_val_macro_auc"):
        save_checkpoint(tmp_path / "m.pt", model, replace(META, best_val_macro_auc=np.float64(0.8)))
    with pytest.raises(CheckpointError, match="'meta.image_size' must be int"):
        save_checkpoint(tmp_path / "m.pt", model, replace(META, image_size=32.0))
    assert not (tmp_path / "m.pt").exists()


class Exploit:
    """Stands for an arbitrary object in a pickle; weights_only loading must refuse it."""

    def __reduce__(self):
        return (pickle.loads, (b"N.",))
