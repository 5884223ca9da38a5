"""Autoencoder shapes and sizes: the published configurations on the meta device (nothing
allocated), the small CPU defaults, and the shortcut remedies."""
import pytest
import torch

from assurexray.anomaly.models import (
    PUBLISHED,
    ArchitectureError,
    UNetAE,
    build_autoencoder,
    count_parameters,
)
from assurexray.params import Params

# Documented in anomaly/models.py (ImgAE-Dx: about 55M with an unused decode path, 273M).
PUBLISHED_PARAMETERS = {"unet": 46_977_921, "reversed": 272_717_697}


@pytest.mark.parametrize("arch", sorted(PUBLISHED))
def test_published_sizes_on_the_meta_device(arch):
    config = dict(PUBLISHED[arch])
    size = config.pop("image_size")
    with torch.device("meta"):
        model = build_autoencoder(arch, size, config)
        out = model(torch.empty(2, 1, size, size))
    assert out.shape == (2, 1, size, size)
    assert out.device.type == "meta"
    assert count_parameters(model) == PUBLISHED_PARAMETERS[arch]


def test_reversed_is_the_larger_and_both_near_the_published_counts():
    assert abs(PUBLISHED_PARAMETERS["unet"] - 55e6) / 55e6 < 0.2
    assert abs(PUBLISHED_PARAMETERS["reversed"] - 273e6) / 273e6 < 0.01


@pytest.mark.parametrize("arch", ["unet", "reversed"])
def test_cpu_defaults_are_small_and_keep_the_shape(arch):
    p = Params().anomaly
    config = {k: v for k, v in vars(getattr(p, arch)).items() if k != "noise_std"}
    model = build_autoencoder(arch, p.image_size, config)
    x = torch.rand(3, 1, p.image_size, p.image_size)
    with torch.no_grad():
        y = model(x)
    assert y.shape == x.shape and 0 <= float(y.min()) and float(y.max()) <= 1
    assert count_parameters(model) < 2_000_000


def test_removed_skips_shrink_the_decoder_and_bad_levels_are_named():
    full = UNetAE(32, base_channels=4, depth=2, latent=0)
    no_top = UNetAE(32, base_channels=4, depth=2, latent=0, drop_skips=[0])
    assert count_parameters(no_top) < count_parameters(full)
    assert no_top(torch.rand(1, 1, 32, 32)).shape == (1, 1, 32, 32)
    with pytest.raises(ArchitectureError, match="drop_skips"):
        UNetAE(32, depth=2, drop_skips=[2])
    with pytest.raises(ArchitectureError, match="multiple of"):
        UNetAE(36, depth=3)


def test_skip_dropout_acts_in_training_only():
    torch.manual_seed(0)
    model = UNetAE(16, base_channels=4, depth=2, latent=0, skip_dropout=0.5)
    x = torch.rand(8, 1, 16, 16)  # 8 samples x 2 skips: all kept or dropped alike is ~1e-5
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))
