"""The two autoencoder families, built from params (plain PyTorch, single-channel in and out).

- ``UNetAE``: a bilinear U-Net whose deepest map passes through a dense bottleneck. Its skip
  connections let it copy the input, lesion included (the identity shortcut); the remedies are
  params: ``skip_dropout`` drops whole skip maps while training, ``drop_skips`` removes skip
  levels, and ``noise_std`` (in training) makes it a denoising autoencoder.
- ``ReversedAE``: a strided encoder, a dense latent and a shallower transposed-conv decoder,
  no skips (ImgAE-Dx's "reversed autoencoder").

At the published sizes (``PUBLISHED``, 128 px) the U-Net has 47.0M parameters (ImgAE-Dx reports
about 55M because it also builds a decode-only path that its forward pass never uses, about 8M)
and the reversed autoencoder 272.7M; in both, most of it is the dense layers around the latent.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from assurexray.errors import AssureXRayError

ARCHS = ("unet", "reversed")
# The published configurations (ImgAE-Dx, 128 px input).
PUBLISHED = {
    "unet": {"base_channels": 64, "depth": 4, "latent": 512, "image_size": 128},
    "reversed": {"base_channels": 64, "depth": 3, "latent": 512, "image_size": 128},
}


class ArchitectureError(AssureXRayError, ValueError):
    """Autoencoder params that cannot build a model (the message names the key)."""


def double_conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(True))


class DenseBottleneck(nn.Module):
    """(C, s, s) -> latent vector -> (C, s, s); the only path that must summarize the image."""

    def __init__(self, channels: int, side: int, latent: int, hidden: int | None = None):
        super().__init__()
        flat = channels * side * side
        mid = [nn.Linear(flat, hidden), nn.ReLU(True), nn.Linear(hidden, latent)] if hidden else [
            nn.Linear(flat, latent)]
        out = [nn.Linear(latent, hidden), nn.ReLU(True), nn.Linear(hidden, flat)] if hidden else [
            nn.Linear(latent, flat)]
        self.encode, self.decode = nn.Sequential(*mid), nn.Sequential(*out)
        self.shape = (channels, side, side)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.encode(x.flatten(1))
        return self.decode(F.relu(z)).view(len(x), *self.shape)


class UNetAE(nn.Module):
    def __init__(self, image_size: int, base_channels: int = 8, depth: int = 3, latent: int = 64,
                 skip_dropout: float = 0.0, drop_skips: list[int] | tuple[int, ...] = ()):
        super().__init__()
        _check_side(image_size, depth, "unet")
        bad = [lvl for lvl in drop_skips if not 0 <= lvl < depth]
        if bad:
            raise ArchitectureError(f"anomaly.unet.drop_skips: levels {bad} outside 0..{depth - 1}")
        # Bilinear U-Net convention: the deepest level keeps the channels of the one above it.
        ch = [base_channels * 2 ** min(i, depth - 1) for i in range(depth + 1)]
        self.skips = [lvl not in drop_skips for lvl in range(depth)]
        self.skip_dropout = skip_dropout
        self.inc = double_conv(1, ch[0])
        self.downs = nn.ModuleList(double_conv(ch[i], ch[i + 1]) for i in range(depth))
        side = image_size // 2 ** depth
        self.bottleneck = DenseBottleneck(ch[depth], side, latent) if latent > 0 else nn.Identity()
        # up[i] brings level i+1 up to level i; what arrives there has ch[i] channels (the
        # convention above), and it leaves with the width of level i-1 (ch[0] at the top).
        self.ups = nn.ModuleList(
            double_conv(ch[i] * (2 if self.skips[i] else 1), ch[max(i - 1, 0)])
            for i in range(depth))
        self.out = nn.Conv2d(ch[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [self.inc(x)]
        for down in self.downs:
            feats.append(down(F.max_pool2d(feats[-1], 2)))
        y = self.bottleneck(feats[-1])
        for level in reversed(range(len(self.ups))):
            y = F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=False)
            if self.skips[level]:
                y = torch.cat([self._skip(feats[level]), y], dim=1)
            y = self.ups[level](y)
        return torch.sigmoid(self.out(y))

    def _skip(self, feat: torch.Tensor) -> torch.Tensor:
        """Training: drop the whole skip map of a sample with probability ``skip_dropout``."""
        if not self.training or self.skip_dropout <= 0:
            return feat
        keep = torch.rand(len(feat), 1, 1, 1, device=feat.device) >= self.skip_dropout
        return feat * keep / (1 - self.skip_dropout)


def conv_bn(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU(True))


def up_bn(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose2d(c_in, c_out, 3, 2, 1, output_padding=1, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(True))


class ReversedAE(nn.Module):
    def __init__(self, image_size: int, base_channels: int = 8, depth: int = 3, latent: int = 64):
        super().__init__()
        _check_side(image_size, depth, "reversed")
        ch = [base_channels * 2 ** i for i in range(depth + 1)]
        self.encoder = nn.Sequential(conv_bn(1, ch[0], 1),
                                     *(conv_bn(ch[i], ch[i + 1], 2) for i in range(depth)))
        self.bottleneck = DenseBottleneck(ch[depth], image_size // 2 ** depth, latent,
                                          hidden=2 * latent)
        self.decoder = nn.Sequential(*(up_bn(ch[i + 1], ch[i]) for i in reversed(range(depth))))
        self.out = nn.Conv2d(ch[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.out(self.decoder(self.bottleneck(self.encoder(x)))))


def _check_side(image_size: int, depth: int, arch: str) -> None:
    if depth < 1 or image_size % 2 ** depth:
        raise ArchitectureError(f"anomaly.{arch}.depth {depth}: anomaly.image_size {image_size} "
                                f"must be a multiple of 2**depth (and depth >= 1)")


def architecture_config(arch: str, arch_params) -> dict:
    """The constructor keywords of ``arch`` from its params section (stored in checkpoints)."""
    keys = {"unet": ("base_channels", "depth", "latent", "skip_dropout", "drop_skips"),
            "reversed": ("base_channels", "depth", "latent")}
    if arch not in keys:
        raise ArchitectureError(f"unknown autoencoder architecture {arch!r}; one of {ARCHS}")
    return {k: getattr(arch_params, k) if not isinstance(arch_params, dict) else arch_params[k]
            for k in keys[arch]}


def build_autoencoder(arch: str, image_size: int, config: dict) -> nn.Module:
    if arch == "unet":
        return UNetAE(image_size, **config)
    if arch == "reversed":
        return ReversedAE(image_size, **config)
    raise ArchitectureError(f"unknown autoencoder architecture {arch!r}; one of {ARCHS}")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
