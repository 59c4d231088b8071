"""Model registry: every model normalises its own input and splits into ``features`` and ``head``.

``create_model(name, ...)`` builds a registered model and fails listing the known names;
``check_model(name, params)`` answers whether it would, without building anything.
Every model is a :class:`Classifier`: ``forward(x) == head(features(x))`` with ``head`` the final
``nn.Linear`` (Hypersphere Embedding swaps it; AMR reads the penultimate features).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from functools import partial

import torch
from torch import nn

from trainables.registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")


def register_model(name: str):
    return MODELS.register(name)


def list_models() -> list[str]:
    return MODELS.names()


class Classifier(nn.Module):
    """Input normalisation → ``body`` (penultimate features) → ``head`` (an ``nn.Linear``)."""

    def __init__(self, body: nn.Module, feature_dim: int, num_classes: int,
                 mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        shape = (1, len(mean), 1, 1)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(shape))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(shape))
        self.body = body
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body((x - self.mean) / self.std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def create_model(name: str, *, num_classes: int = 10, in_channels: int = 3,
                 image_size: int = 32, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, **kwargs) -> Classifier:
    """Build model ``name`` for inputs (in_channels, image_size, image_size) in [0, 1].

    ``wrn-D-W`` names a wide ResNet of depth D and width W even when not registered.
    """
    if name.startswith("wrn-") and name not in MODELS:
        depth, width = _parse_wrn(name)
        kwargs = {"depth": depth, "width": width, **kwargs}
        name = "wrn"
    builder = MODELS.get(name)
    mean = tuple(mean) if mean is not None else (0.0,) * in_channels
    std = tuple(std) if std is not None else (1.0,) * in_channels
    if len(mean) != in_channels or len(std) != in_channels:
        raise ValueError(f"mean/std need {in_channels} entries, got {len(mean)}/{len(std)}")
    body, feature_dim = builder(in_channels=in_channels, image_size=image_size, **kwargs)
    return Classifier(body, feature_dim, num_classes, mean, std)


def _parse_wrn(name: str) -> tuple[int, int]:
    try:
        _, depth, width = name.split("-")
        return int(depth), int(width)
    except ValueError:
        raise ValueError(f"wide ResNet names read wrn-DEPTH-WIDTH, got {name!r}") from None


def check_model(name: str, params: dict | None = None) -> None:
    """Fail (``ValueError``) unless :func:`create_model` can build ``name`` with ``params``,
    without building it: a registered name or ``wrn-DEPTH-WIDTH``, arguments the builder takes,
    and whatever the builder declares as its ``check_arguments`` (wide ResNets: depth 6n + 4)."""
    params, asked = dict(params or {}), name
    if name.startswith("wrn-") and name not in MODELS:
        depth, width = _parse_wrn(name)
        params = {"depth": depth, "width": width, **params}
        name = "wrn"
    if name not in MODELS:
        raise ValueError(f"model must be one of {list_models()} or wrn-DEPTH-WIDTH, "
                         f"got {name!r}")
    builder = MODELS.get(name)
    if isinstance(builder, partial):  # a registered size of a family (wrn-34-10)
        params, builder = {**builder.keywords, **params}, builder.func
    signature = inspect.signature(builder)
    accepted = [p for p in signature.parameters if p not in ("in_channels", "image_size")]
    try:
        bound = signature.bind_partial(**params)
    except TypeError:
        unknown = sorted(set(params) - set(accepted))
        raise ValueError(f"model_params {unknown} are not arguments of model {asked!r}; "
                         f"accepted: {accepted or 'none'}") from None
    bound.apply_defaults()
    check = getattr(builder, "check_arguments", None)
    if check is not None:
        check(**{k: v for k, v in bound.arguments.items() if k in accepted})


# --------------------------------------------------------------------------- small models
@register_model("mlp")
def mlp(*, in_channels: int, image_size: int, hidden: int = 1024, layers: int = 4):
    """EMR's MLP: ``layers`` hidden layers of ``hidden`` ReLU units (4×1024)."""
    dims = [in_channels * image_size * image_size] + [hidden] * layers
    blocks: list[nn.Module] = [nn.Flatten()]
    for d_in, d_out in zip(dims[:-1], dims[1:], strict=True):
        blocks += [nn.Linear(d_in, d_out), nn.ReLU()]
    return nn.Sequential(*blocks), hidden


@register_model("cnn4")
def cnn4(*, in_channels: int, image_size: int):
    """EMR's four-layer CNN (its Table 5: ReLU convolutions, average pooling, global pooling).

    The paper's table leaves layers 1 and 4 blank; they are taken as CONV(5, 32, 1) and
    CONV(3, 64, 1), which keeps the stated CONV(5, 64) and CONV(3, 128) widths doubling.
    """
    body = nn.Sequential(
        nn.Conv2d(in_channels, 32, 5), nn.ReLU(),
        nn.Conv2d(32, 64, 5), nn.ReLU(),
        nn.AvgPool2d(2, 2),
        nn.Conv2d(64, 64, 3), nn.ReLU(),
        nn.Conv2d(64, 128, 3), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )
    return body, 128


@register_model("small_cnn")
def small_cnn(*, in_channels: int, image_size: int, dropout: float = 0.5):
    """TRADES' MNIST network: four 3×3 convolutions, two max-pools, two 200-unit layers."""
    side = ((image_size - 4) // 2 - 4) // 2
    body = nn.Sequential(
        nn.Conv2d(in_channels, 32, 3), nn.ReLU(),
        nn.Conv2d(32, 32, 3), nn.ReLU(),
        nn.MaxPool2d(2, 2),
        nn.Conv2d(32, 64, 3), nn.ReLU(),
        nn.Conv2d(64, 64, 3), nn.ReLU(),
        nn.MaxPool2d(2, 2),
        nn.Flatten(),
        nn.Linear(64 * side * side, 200), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(200, 200), nn.ReLU(),
    )
    return body, 200


def _conv_in_lrelu(c_in: int, c_out: int, kernel: int, stride: int,
                   padding: int) -> list[nn.Module]:
    # No conv bias: the instance norm right after it would subtract it again.
    return [nn.Conv2d(c_in, c_out, kernel, stride, padding, bias=False), nn.InstanceNorm2d(c_out),
            nn.LeakyReLU()]


@register_model("smd_fashion_cnn")
def smd_fashion_cnn(*, in_channels: int, image_size: int, width: int = 64):
    """SMD's Fashion-MNIST network (App. B.4).

    COV(1,64,5,2,2)-LR-COV(64,128,5,2,2)-IN-LR-COV(128,256,5,2,2)-IN-LR-COV(256,512,4,1,0)-
    Flatten-LN-LR-Linear(512,10); ``width`` is the first layer's channels (64 in the paper),
    the others keep their ratios. LR is leaky ReLU (the paper gives no slope: PyTorch's 0.01).
    """
    if image_size != 28:
        raise ValueError(f"smd_fashion_cnn takes 28×28 inputs, got {image_size}")
    body = nn.Sequential(
        nn.Conv2d(in_channels, width, 5, 2, 2), nn.LeakyReLU(),
        *_conv_in_lrelu(width, 2 * width, 5, 2, 2),
        *_conv_in_lrelu(2 * width, 4 * width, 5, 2, 2),
        nn.Conv2d(4 * width, 8 * width, 4, 1, 0), nn.Flatten(),
        nn.LayerNorm(8 * width), nn.LeakyReLU(),
    )
    return body, 8 * width


@register_model("smd_svhn_cnn")
def smd_svhn_cnn(*, in_channels: int, image_size: int, width: int = 32):
    """SMD's SVHN network (App. B.3).

    COV(3,32,3,1,1)-LR-COV(32,32,3,2,1)-IN-LR-COV(32,64,3,1,1)-IN-LR-COV(64,64,3,2,1)-IN-LR-
    COV(64,128,3,1,1)-IN-LR-COV(128,128,3,2,1)-IN-LR-COV(128,256,4,1,0)-Flatten-LN-LR-
    Linear(256,10); ``width`` is the first layer's channels (32 in the paper).
    """
    if image_size != 32:
        raise ValueError(f"smd_svhn_cnn takes 32×32 inputs, got {image_size}")
    w = width
    body = nn.Sequential(
        nn.Conv2d(in_channels, w, 3, 1, 1), nn.LeakyReLU(),
        *_conv_in_lrelu(w, w, 3, 2, 1), *_conv_in_lrelu(w, 2 * w, 3, 1, 1),
        *_conv_in_lrelu(2 * w, 2 * w, 3, 2, 1), *_conv_in_lrelu(2 * w, 4 * w, 3, 1, 1),
        *_conv_in_lrelu(4 * w, 4 * w, 3, 2, 1),
        nn.Conv2d(4 * w, 8 * w, 4, 1, 0), nn.Flatten(),
        nn.LayerNorm(8 * w), nn.LeakyReLU(),
    )
    return body, 8 * w


# --------------------------------------------------------------------------- residual networks
class BasicBlock(nn.Module):
    """Post-activation residual block (ResNet-18)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                          nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class PreActBlock(nn.Module):
    """Pre-activation residual block (PreAct ResNet-18, wide ResNets), optional dropout."""

    def __init__(self, c_in: int, c_out: int, stride: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.shortcut = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Conv2d(c_in, c_out, 1, stride, bias=False)

    def forward(self, x):
        out = torch.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(self.dropout(torch.relu(self.bn2(out))))
        return out + shortcut


def _stage(block: Callable[..., nn.Module], c_in: int, c_out: int, blocks: int, stride: int):
    layers = [block(c_in, c_out, stride)] + [block(c_out, c_out, 1) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


@register_model("resnet18")
def resnet18(*, in_channels: int, image_size: int):
    """ResNet-18 for small images (3×3 stem, no max-pool)."""
    widths, stages = (64, 128, 256, 512), []
    c_in = 64
    for i, width in enumerate(widths):
        stages.append(_stage(BasicBlock, c_in, width, 2, 1 if i == 0 else 2))
        c_in = width
    body = nn.Sequential(
        nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
        *stages, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )
    return body, 512


@register_model("preact_resnet18")
def preact_resnet18(*, in_channels: int, image_size: int):
    """PreAct ResNet-18 (He et al. 2016), as used by robust-overfitting and LMA-AT."""
    widths, stages, c_in = (64, 128, 256, 512), [], 64
    for i, width in enumerate(widths):
        stages.append(_stage(PreActBlock, c_in, width, 2, 1 if i == 0 else 2))
        c_in = width
    body = nn.Sequential(
        nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False), *stages,
        nn.BatchNorm2d(512), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )
    return body, 512


@register_model("wrn")
def wide_resnet(*, in_channels: int, image_size: int, depth: int = 34, width: int = 10,
                dropout: float = 0.0):
    """Wide ResNet WRN-depth-width (Zagoruyko & Komodakis), pre-activation blocks."""
    if (depth - 4) % 6 != 0:
        raise ValueError(f"wide ResNet depth must be 6n+4, got {depth}")
    blocks = (depth - 4) // 6
    widths = (16 * width, 32 * width, 64 * width)
    block = partial(PreActBlock, dropout=dropout)
    stages, c_in = [], 16
    for i, c_out in enumerate(widths):
        stages.append(_stage(block, c_in, c_out, blocks, 1 if i == 0 else 2))
        c_in = c_out
    body = nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False), *stages,
        nn.BatchNorm2d(widths[-1]), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )
    return body, widths[-1]


for _depth, _width in ((28, 4), (34, 10), (34, 20)):
    register_model(f"wrn-{_depth}-{_width}")(partial(wide_resnet, depth=_depth, width=_width))


def _check_wide_resnet(*, depth: int, width: int, **_) -> None:
    if not (isinstance(depth, int) and depth >= 10 and (depth - 4) % 6 == 0):
        raise ValueError(f"wide ResNet depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, 34, "
                         f"...), got {depth!r}")
    if not (isinstance(width, int) and width >= 1):
        raise ValueError(f"wide ResNet width must be an integer >= 1, got {width!r}")


wide_resnet.check_arguments = _check_wide_resnet
