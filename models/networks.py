"""Architectures: a lean multi-resolution autoencoder and the classifier built on its encoder.

Both are plain ``nn.Module`` with a dataclass config, so a checkpoint can rebuild them from
the config alone (see :mod:`models.checkpoint`).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


@dataclass(frozen=True)
class EncoderConfig:
    in_channels: int = 1
    channels: tuple[int, ...] = (8, 16, 32, 64)
    negative_slope: float = 0.1
    stem_stride: int = 2  # the first level works at half resolution: 4x less compute

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "channels": list(self.channels)}


@dataclass(frozen=True)
class AutoencoderConfig:
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    bottleneck: int = 16  # channels of the deepest code
    skip_channels: int = 2  # narrow skips: they add detail without letting the AE copy its input
    patch: int = 140

    def to_dict(self) -> dict[str, object]:
        return {
            "encoder": self.encoder.to_dict(),
            "bottleneck": self.bottleneck,
            "skip_channels": self.skip_channels,
            "patch": self.patch,
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> AutoencoderConfig:
        enc = dict(data["encoder"])  # type: ignore[call-overload]
        enc["channels"] = tuple(enc["channels"])
        return cls(
            encoder=EncoderConfig(**enc),
            bottleneck=int(data["bottleneck"]),  # type: ignore[call-overload]
            skip_channels=int(data["skip_channels"]),  # type: ignore[call-overload]
            patch=int(data["patch"]),  # type: ignore[call-overload]
        )


def _block(cin: int, cout: int, slope: float, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.LeakyReLU(slope, inplace=True),
    )


class Encoder(nn.Module):
    """Levels of 3x3 conv + BatchNorm + LeakyReLU, each followed by 2x2 pooling.

    Fully convolutional: applied to a large tile it yields the feature maps of every patch
    position in one pass (see :meth:`Classifier.dense`).
    """

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        chans = (config.in_channels, *config.channels)
        self.levels = nn.ModuleList(
            _block(
                chans[i], chans[i + 1], config.negative_slope, config.stem_stride if i == 0 else 1
            )
            for i in range(len(config.channels))
        )

    @property
    def out_channels(self) -> int:
        return self.config.channels[-1]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps after each level (before its pooling), finest first."""
        features = []
        for i, level in enumerate(self.levels):
            x = level(x)
            features.append(x)
            if i < len(self.levels) - 1:
                x = F.max_pool2d(x, 2)
        return features


class Autoencoder(nn.Module):
    """Multi-resolution "skip" autoencoder: intermediate-resolution features pass through
    narrow 1x1 bottlenecks and are handed back to the decoder at the same resolutions."""

    def __init__(self, config: AutoencoderConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or AutoencoderConfig()
        enc = config.encoder
        self.encoder = Encoder(enc)
        ch = enc.channels
        self.code = nn.Conv2d(ch[-1], config.bottleneck, 1)
        self.skips = nn.ModuleList(nn.Conv2d(c, config.skip_channels, 1) for c in ch[:-1])
        ups: list[nn.Module] = []
        cin = config.bottleneck
        for c in reversed(ch[:-1]):
            ups.append(_block(cin + config.skip_channels, c, enc.negative_slope))
            cin = c
        self.ups = nn.ModuleList(ups)
        self.out = nn.Conv2d(cin, enc.in_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reconstruct(x)[0]

    def reconstruct(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The reconstruction and the embedding (:meth:`embed`) from one encoder pass."""
        features = self.encoder(x)
        y = self.code(features[-1])
        for up, skip, feat in zip(
            self.ups, reversed(self.skips), reversed(features[:-1]), strict=True
        ):
            y = F.interpolate(y, size=feat.shape[-2:], mode="bilinear", align_corners=False)
            y = up(torch.cat([y, skip(feat)], dim=1))
        y = self.out(y)
        if y.shape[-2:] != x.shape[-2:]:
            y = F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return y, features[-1].mean(dim=(2, 3))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Per-patch embedding: the deepest features, average-pooled."""
        return self.encoder(x)[-1].mean(dim=(2, 3))


@dataclass(frozen=True)
class ClassifierConfig:
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    n_types: int = 0  # > 0 adds an artifact-type head
    dropout: float = 0.3
    hidden: int = 64

    def to_dict(self) -> dict[str, object]:
        return {
            "encoder": self.encoder.to_dict(),
            "n_types": self.n_types,
            "dropout": self.dropout,
            "hidden": self.hidden,
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> ClassifierConfig:
        enc = dict(data["encoder"])  # type: ignore[call-overload]
        enc["channels"] = tuple(enc["channels"])
        return cls(
            encoder=EncoderConfig(**enc),
            n_types=int(data["n_types"]),  # type: ignore[call-overload]
            dropout=float(data["dropout"]),  # type: ignore[arg-type]
            hidden=int(data["hidden"]),  # type: ignore[call-overload]
        )


class Head(nn.Module):
    """Small MLP on pooled encoder features: artifact logit (+ optional type logits)."""

    def __init__(self, in_features: int, config: ClassifierConfig) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Dropout(config.dropout),
            nn.Linear(in_features, config.hidden),
            nn.LeakyReLU(0.1),
            nn.Dropout(config.dropout),
        )
        self.artifact = nn.Linear(config.hidden, 1)
        self.types = nn.Linear(config.hidden, config.n_types) if config.n_types else None

    def forward(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = self.body(pooled)
        return self.artifact(h).squeeze(-1), (self.types(h) if self.types is not None else None)


def pool_features(deepest: torch.Tensor) -> torch.Tensor:
    """Average and max pooling of the deepest feature map: 2 x channels per patch."""
    return torch.cat([deepest.mean(dim=(2, 3)), deepest.amax(dim=(2, 3))], dim=1)


class Classifier(nn.Module):
    """The autoencoder's encoder plus a small head."""

    def __init__(self, config: ClassifierConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or ClassifierConfig()
        self.encoder = Encoder(config.encoder)
        self.head = Head(2 * self.encoder.out_channels, config)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return pool_features(self.encoder(x)[-1])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.head(self.features(x))

    @torch.no_grad()
    def dense(
        self, tile: torch.Tensor, *, patch: int = 140, stride: int = 35, temperature: float = 1.0
    ) -> torch.Tensor:
        """p(artifact) for every patch position of a large tile at ``stride``, from one
        encoder pass: pooling windows over the deepest feature map replace per-patch passes.
        Logits are divided by ``temperature`` (the calibration fitted after training).

        Returns (n, 1, rows, cols); patch (i, j) has its top-left at (i*stride, j*stride).
        """
        deepest = self.encoder(tile)[-1]
        scale = tile.shape[-1] / deepest.shape[-1]
        window = max(1, round(patch / scale))
        step = max(1, round(stride / scale))
        avg = F.avg_pool2d(deepest, window, step)
        mx = F.max_pool2d(deepest, window, step)
        pooled = torch.cat([avg, mx], dim=1)
        n, c, h, w = pooled.shape
        flat = pooled.permute(0, 2, 3, 1).reshape(-1, c)
        logits, _ = self.head(flat)
        return torch.sigmoid(logits / temperature).reshape(n, 1, h, w)

    def load_encoder_from(self, autoencoder: Autoencoder) -> None:
        self.encoder.load_state_dict(autoencoder.encoder.state_dict())


def for_inference(model: nn.Module) -> nn.Module:
    """A copy of ``model`` for fast eval-mode forward passes: every conv + BatchNorm pair
    folded into one conv, and channels-last memory on the CPU (4-5x the patches per second
    on two cores; results equal to float rounding). The original stays untouched; a model
    that already is such a copy is returned as it is."""
    if getattr(model, "for_inference", False):
        return model
    fast = copy.deepcopy(model).eval()
    for block in fast.modules():
        if (
            isinstance(block, nn.Sequential)
            and len(block) >= 2
            and isinstance(block[0], nn.Conv2d)
            and isinstance(block[1], nn.BatchNorm2d)
        ):
            block[0] = fuse_conv_bn_eval(block[0], block[1])
            block[1] = nn.Identity()
    if next(fast.parameters()).device.type == "cpu":
        fast = fast.to(memory_format=torch.channels_last)
    fast.for_inference = True
    return fast


# rotations first: the first 4 views are the quarter turns, all 8 add the mirror images
DIHEDRAL = tuple((k, flip) for flip in (False, True) for k in range(4))


def dihedral(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    """``x`` rotated by ``k`` quarter turns, then mirrored left-right if ``flip``."""
    x = torch.rot90(x, k, dims=(-2, -1))
    return torch.flip(x, dims=(-1,)) if flip else x


def dihedral_views(x: torch.Tensor, n: int) -> Iterator[torch.Tensor]:
    """The first ``n`` (1-8) of the flips/quarter turns of a batch, channels-last on the CPU
    (for a model made by :func:`for_inference`)."""
    if not 1 <= n <= len(DIHEDRAL):
        raise ValueError(f"test-time views must be 1..{len(DIHEDRAL)}, got {n}")
    for k, flip in DIHEDRAL[:n]:
        view = dihedral(x, k, flip)
        yield view.contiguous(memory_format=torch.channels_last) if x.is_cpu else view
