"""The built-in augmentation ops, each in two forms: batched tensor ops and torchvision v2.

`op.batch(x, g)` augments a whole float batch (B, C, H, W) in [0, 1] on its own device
with tensor ops and an independent draw per sample (airbench's approach), taking every
random number from the generator `g`, so DeviceLoader batches are reproducible from a seed
and never wait on the host. `op.transform()` is the per-sample torchvision v2 equivalent
that StreamLoader runs in its workers. The batched kernels follow torchvision's parameter
draws and pixel conventions, so the two forms agree for the same parameters (the tests
compare them against `torchvision.transforms.v2.functional`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import AfterValidator

from trainpipe.data.augment.kernels import (
    adjust_colors,
    crop_at,
    erase_boxes,
    gaussian_blur,
    perspective_grids,
    rotation_grids,
    warp,
)
from trainpipe.config.types import Fraction, NonNegativeInt, PositiveInt, Probability
from trainpipe.errors import ConfigError
from trainpipe.registry import AUGMENTS

Range = tuple[float, float]
Interpolation = Literal["bilinear", "nearest"]
BatchFn = Callable[[torch.Tensor, torch.Generator], torch.Tensor]

if TYPE_CHECKING:
    from torchvision.transforms import v2


def _v2():  # noqa: ANN202
    # torchvision is imported when a per-sample transform is built (StreamLoader), not when
    # the ops are registered: importing it costs about a second (it imports torch._dynamo).
    from torchvision.transforms import v2

    return v2


def _interpolation(name: str):  # noqa: ANN202
    return _v2().InterpolationMode.BILINEAR if name == "bilinear" else _v2().InterpolationMode.NEAREST


class OptionError(ConfigError):
    """A bad option of one op; `build_pipeline` prefixes it with the config key."""

    def __init__(self, op: str, detail: str) -> None:
        super().__init__(f"{op}: {detail}")
        self.op = op
        self.detail = detail


class AugmentOp:
    """One augmentation step: `batch(x, g)` for DeviceLoader, `transform()` for StreamLoader."""

    def __init__(
        self, name: str, batch_fn: BatchFn | None, make_transform: Callable[[], v2.Transform]
    ) -> None:
        self.name = name
        self._batch_fn = batch_fn
        self._make_transform = make_transform

    @property
    def has_batched(self) -> bool:
        return self._batch_fn is not None

    def batch(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Augment a float batch (B, C, H, W) in [0, 1], one random draw per sample from `g`."""
        if self._batch_fn is None:
            raise ConfigError(
                f"augmentation {self.name!r} has no batched form, so it cannot run in DeviceLoader; "
                "set data.loader to auto or stream, or remove the op from data.augment."
            )
        return self._batch_fn(x, g)

    def transform(self) -> v2.Transform:
        """The per-sample torchvision v2 transform (on a (C, H, W) float tensor in [0, 1])."""
        return self._make_transform()

    def __repr__(self) -> str:
        return f"AugmentOp({self.name!r}, batched={self.has_batched})"


# ---------------------------------------------------------------- option types
# Each op's keyword-only signature is its schema: `trainpipe.config.load` checks these
# annotations with the rest of the config, so the op bodies below trust their options.


def _to_range(value: float | Sequence[float], *, center: float, low: float, clip_low: bool = False) -> Range:
    """torchvision's convention: a number v means [center - v, center + v]; a pair is (min, max)."""
    if isinstance(value, (int, float)):
        lo, hi = center - value, center + value
        return (max(lo, low) if clip_low else lo), hi
    return float(value[0]), float(value[1])


def _span(*, center: float, low: float, high: float = math.inf, clip_low: bool = False) -> object:
    """An option that is a number v ([center - v, center + v]) or a (min, max) pair within [low, high]."""

    def check(value: float | tuple[float, float]) -> float | tuple[float, float]:
        if isinstance(value, (int, float)) and value < 0:
            raise ValueError("must be >= 0 when given as one number")
        lo, hi = _to_range(value, center=center, low=low, clip_low=clip_low)
        if lo > hi:
            raise ValueError("must be (min, max) with min <= max")
        if not (low <= lo and hi <= high):
            raise ValueError(f"must lie within [{low:g}, {high:g}]")
        return value

    return Annotated[float | tuple[float, float], AfterValidator(check)]


def _odd_kernel(value: int | tuple[int, int]) -> int | tuple[int, int]:
    kx, ky = _pair(value)
    if not (kx > 0 and ky > 0 and kx % 2 == 1 and ky % 2 == 1):
        raise ValueError("must be odd and positive")
    return value


def _positive_pair(value: int | tuple[int, int] | None) -> int | tuple[int, int] | None:
    if value is not None and min(_pair(value)) <= 0:
        raise ValueError("must be positive")
    return value


def _fraction_pair(value: float | tuple[float, float]) -> float | tuple[float, float]:
    fx, fy = (value, value) if isinstance(value, (int, float)) else value
    if not (0 <= fx <= 1 and 0 <= fy <= 1):
        raise ValueError("must be in [0, 1]")
    return value


def _unit_ordered(value: tuple[float, float]) -> tuple[float, float]:
    if not 0 <= value[0] <= value[1] <= 1:
        raise ValueError("must be (min, max) with 0 <= min <= max <= 1")
    return value


def _positive_ordered(value: tuple[float, float]) -> tuple[float, float]:
    if not 0 < value[0] <= value[1]:
        raise ValueError("must be (min, max) with 0 < min <= max")
    return value


ColorSpan = _span(center=1.0, low=0.0, clip_low=True)
HueSpan = _span(center=0.0, low=-0.5, high=0.5)
Degrees = _span(center=0.0, low=-360.0, high=360.0)


def _sigma(value: float | tuple[float, float]) -> float | tuple[float, float]:
    _positive_ordered((value, value) if isinstance(value, (int, float)) else value)
    return value


Sigma = Annotated[float | tuple[float, float], AfterValidator(_sigma)]


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _uniform(x: torch.Tensor, g: torch.Generator, lo: float, hi: float) -> torch.Tensor:
    return torch.rand(x.shape[0], generator=g, device=x.device).mul_(hi - lo).add_(lo)


def _coin(x: torch.Tensor, g: torch.Generator, p: float) -> torch.Tensor:
    return torch.rand(x.shape[0], generator=g, device=x.device) < p


def _constants(values: float | Sequence[float], like: torch.Tensor) -> torch.Tensor:
    """(1, len(values), 1, 1) on like's device, built with fills: torch.tensor(list,
    device=cuda) would copy from pageable host memory and wait for the device."""
    values = [values] if isinstance(values, (int, float)) else values
    fills = [torch.full((), float(v), dtype=like.dtype, device=like.device) for v in values]
    return torch.stack(fills).view(1, -1, 1, 1)


def _where(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.view(-1, 1, 1, 1), a, b)


# ---------------------------------------------------------------- geometric ops


@AUGMENTS.register("random_crop")
def random_crop(
    *,
    size: Annotated[int | tuple[int, int] | None, AfterValidator(_positive_pair)] = None,
    padding: NonNegativeInt = 4,
    padding_mode: Literal["reflect", "zero", "edge"] = "reflect",
) -> AugmentOp:
    """Pad the image, then crop a random window (by default of the original size)."""
    out = None if size is None else _pair(size)
    torch_mode = {"reflect": "reflect", "zero": "constant", "edge": "replicate"}[padding_mode]
    tv_mode = {"reflect": "reflect", "zero": "constant", "edge": "edge"}[padding_mode]

    def batch(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        h, w = out or x.shape[-2:]
        if torch_mode == "reflect" and padding >= min(x.shape[-2:]):
            raise ConfigError(
                f"random_crop: reflect padding of {padding} needs images larger than {padding} "
                f"pixels, got {tuple(x.shape[-2:])}; lower padding or use padding_mode: zero."
            )
        padded = F.pad(x, (padding,) * 4, mode=torch_mode) if padding else x
        ph, pw = padded.shape[-2:]
        if h > ph or w > pw:
            raise ConfigError(
                f"random_crop: the crop size ({h}, {w}) is larger than the padded image "
                f"({ph}, {pw}); lower size or raise padding in data.augment."
            )
        top = torch.randint(0, ph - h + 1, (x.shape[0],), generator=g, device=x.device)
        left = torch.randint(0, pw - w + 1, (x.shape[0],), generator=g, device=x.device)
        return crop_at(padded, top, left, h, w)

    def transform() -> v2.Transform:
        if out is None:
            from trainpipe.data.stream_transforms import PadRandomCrop

            return PadRandomCrop(padding=padding, padding_mode=tv_mode)
        return _v2().RandomCrop(out, padding=padding or None, padding_mode=tv_mode)

    return AugmentOp("random_crop", batch, transform)


@AUGMENTS.register("translate")
def translate(*, fraction: Annotated[float | tuple[float, float], AfterValidator(_fraction_pair)] = 0.125,
              fill: float = 0.0) -> AugmentOp:
    """Shift by a random whole number of pixels, up to `fraction` of the width and height."""
    fx, fy = (fraction, fraction) if isinstance(fraction, (int, float)) else fraction

    def batch(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        # RandomAffine draws a uniform shift and rounds it to whole pixels, so the batched
        # form is an exact gather from a padded copy: no interpolation, same distribution.
        h, w = x.shape[-2:]
        max_dx, max_dy = fx * w, fy * h
        tx = _uniform(x, g, -max_dx, max_dx).round_().long()
        ty = _uniform(x, g, -max_dy, max_dy).round_().long()
        px, py = math.ceil(max_dx), math.ceil(max_dy)
        padded = F.pad(x, (px, px, py, py), value=fill)
        return crop_at(padded, py - ty, px - tx, h, w)

    return AugmentOp(
        "translate", batch, lambda: _v2().RandomAffine(degrees=0.0, translate=(fx, fy), fill=fill)
    )


@AUGMENTS.register("hflip")
def hflip(*, p: Probability = 0.5) -> AugmentOp:
    """Mirror left-right with probability p."""
    return AugmentOp(
        "hflip", lambda x, g: _where(_coin(x, g, p), x.flip(-1), x), lambda: _v2().RandomHorizontalFlip(p)
    )


@AUGMENTS.register("vflip")
def vflip(*, p: Probability = 0.5) -> AugmentOp:
    """Mirror top-bottom with probability p."""
    return AugmentOp(
        "vflip", lambda x, g: _where(_coin(x, g, p), x.flip(-2), x), lambda: _v2().RandomVerticalFlip(p)
    )


@AUGMENTS.register("rotation")
def rotation(
    *,
    degrees: Degrees = 15.0,
    interpolation: Interpolation = "bilinear",
    fill: float = 0.0,
) -> AugmentOp:
    """Rotate about the centre by an angle drawn uniformly from [-degrees, degrees]."""
    lo, hi = _to_range(degrees, center=0.0, low=-360.0)

    def batch(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        grids = rotation_grids(_uniform(x, g, lo, hi), *x.shape[-2:], dtype=x.dtype)
        return warp(x, grids, interpolation, fill)

    return AugmentOp(
        "rotation",
        batch,
        lambda: _v2().RandomRotation((lo, hi), interpolation=_interpolation(interpolation), fill=fill),
    )


@AUGMENTS.register("perspective")
def perspective(
    *,
    distortion_scale: Fraction = 0.5,
    p: Probability = 0.5,
    interpolation: Interpolation = "bilinear",
    fill: float = 0.0,
) -> AugmentOp:
    """Move each corner inwards by up to distortion_scale of the half size, with probability p."""

    def batch(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        b, (h, w) = x.shape[0], x.shape[-2:]
        # The corner draws of RandomPerspective.make_params: whole-pixel offsets in [0, bound).
        bound_h, bound_w = int(distortion_scale * (h // 2)) + 1, int(distortion_scale * (w // 2)) + 1
        corner = torch.arange(4, device=x.device)  # top-left, top-right, bottom-right, bottom-left
        far_x = ((corner == 1) | (corner == 2)) * (w - bound_w)
        far_y = (corner >= 2) * (h - bound_h)
        end_x = torch.randint(0, bound_w, (b, 4), generator=g, device=x.device) + far_x
        end_y = torch.randint(0, bound_h, (b, 4), generator=g, device=x.device) + far_y
        apply = _coin(x, g, p)
        grids = perspective_grids(end_x, end_y, h, w, dtype=x.dtype)
        # A pixel on the warp's horizon maps to infinity (NaN from grid_sample): it lies
        # outside the image and gets the fill, as in stream_transforms.Perspective.
        return _where(apply, warp(x, grids, interpolation, fill).nan_to_num(nan=fill), x)

    def transform() -> v2.Transform:
        from trainpipe.data.stream_transforms import Perspective

        return Perspective(distortion_scale, p, interpolation=_interpolation(interpolation), fill=fill)

    return AugmentOp("perspective", batch, transform)


# ---------------------------------------------------------------- photometric ops


@AUGMENTS.register("color_jitter")
def color_jitter(
    *,
    brightness: ColorSpan = 0.0,
    contrast: ColorSpan = 0.0,
    saturation: ColorSpan = 0.0,
    hue: HueSpan = 0.0,
) -> AugmentOp:
    """Random brightness, contrast, saturation and hue: the factors and the order of the four
    adjustments drawn per sample, as torchvision's ColorJitter draws them per image."""
    spans: dict[str, Range | None] = {}
    for name, value in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
        spans[name] = _to_range(value, center=1.0, low=0.0, clip_low=True)
    spans["hue"] = _to_range(hue, center=0.0, low=-0.5)
    identity = {"brightness": 1.0, "contrast": 1.0, "saturation": 1.0, "hue": 0.0}
    active = {k: v for k, v in spans.items() if v != (identity[k], identity[k])}

    def batch(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        factors = {k: _uniform(x, g, lo, hi) for k, (lo, hi) in active.items()}
        # ColorJitter's torch.randperm(4), one per sample.
        order = torch.rand((x.shape[0], 4), generator=g, device=x.device).argsort(dim=1)
        return adjust_colors(x, **factors, order=order)

    return AugmentOp(
        "color_jitter", batch, lambda: _v2().ColorJitter(**{k: active.get(k) for k in spans})
    )


@AUGMENTS.register("gaussian_blur")
def gaussian_blur_op(
    *,
    kernel_size: Annotated[int | tuple[int, int], AfterValidator(_odd_kernel)] = 3,
    sigma: Sigma = (0.1, 2.0),
    p: Probability = 1.0,
) -> AugmentOp:
    """Blur with a Gaussian whose sigma is drawn per sample from the sigma range."""
    kx, ky = _pair(kernel_size)
    lo, hi = (sigma, sigma) if isinstance(sigma, (int, float)) else (float(sigma[0]), float(sigma[1]))

    def batch(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        sigmas = _uniform(x, g, lo, hi)
        apply = _coin(x, g, p)
        return _where(apply, gaussian_blur(x, sigmas, kx, ky), x)

    def transform() -> v2.Transform:
        blur = _v2().GaussianBlur((kx, ky), sigma=(lo, hi))
        return blur if p == 1.0 else _v2().RandomApply([blur], p=p)

    return AugmentOp("gaussian_blur", batch, transform)


@AUGMENTS.register("random_erasing")
def random_erasing(
    *,
    p: Probability = 0.5,
    scale: Annotated[tuple[float, float], AfterValidator(_unit_ordered)] = (0.02, 0.33),
    ratio: Annotated[tuple[float, float], AfterValidator(_positive_ordered)] = (0.3, 3.3),
    value: float | list[float] | Literal["random"] = 0.0,
) -> AugmentOp:
    """Erase a rectangle of random area (a fraction in scale) and aspect ratio, with probability p."""
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))

    def batch(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        b, (h, w) = x.shape[0], x.shape[-2:]
        # RandomErasing makes up to 10 attempts to find a box that fits; all 10 are drawn
        # for every sample at once and the first one that fits is kept.
        shape = (b, 10)
        area = torch.rand(shape, generator=g, device=x.device) * (scale[1] - scale[0]) + scale[0]
        area = area * (h * w)
        aspect = torch.exp(
            torch.rand(shape, generator=g, device=x.device) * (log_ratio[1] - log_ratio[0]) + log_ratio[0]
        )
        bh = torch.sqrt(area * aspect).round_().long()
        bw = torch.sqrt(area / aspect).round_().long()
        fits = (bh < h) & (bw < w)
        first = fits.int().argmax(dim=1, keepdim=True)
        bh, bw = bh.gather(1, first).squeeze(1), bw.gather(1, first).squeeze(1)
        top = (torch.rand(b, generator=g, device=x.device) * (h - bh + 1)).long()
        left = (torch.rand(b, generator=g, device=x.device) * (w - bw + 1)).long()
        apply = _coin(x, g, p) & fits.any(dim=1)
        if value == "random":
            fill = torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)
        else:
            fill = _constants(value, x)
            if fill.shape[1] not in (1, x.shape[1]):
                raise ConfigError(
                    f"random_erasing: value has {fill.shape[1]} entries but the images have "
                    f"{x.shape[1]} channels; give one value or one per channel."
                )
        return erase_boxes(x, top, left, bh, bw, apply, fill)

    return AugmentOp(
        "random_erasing",
        batch,
        lambda: _v2().RandomErasing(p=p, scale=tuple(scale), ratio=tuple(ratio), value=value),
    )


@AUGMENTS.register("cutout")
def cutout(*, size: PositiveInt = 8, p: Probability = 1.0, value: float = 0.0) -> AugmentOp:
    """Erase a size x size square at a random centre, clipped at the border (DeVries & Taylor)."""

    def batch(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        b, (h, w) = x.shape[0], x.shape[-2:]
        cy = torch.randint(0, h, (b,), generator=g, device=x.device)
        cx = torch.randint(0, w, (b,), generator=g, device=x.device)
        top, left = (cy - size // 2).clamp(0, h), (cx - size // 2).clamp(0, w)
        bottom, right = (cy - size // 2 + size).clamp(0, h), (cx - size // 2 + size).clamp(0, w)
        fill = _constants(value, x)
        return erase_boxes(x, top, left, bottom - top, right - left, _coin(x, g, p), fill)

    def transform() -> v2.Transform:
        from trainpipe.data.stream_transforms import Cutout

        return Cutout(size=size, p=p, value=value)

    return AugmentOp("cutout", batch, transform)
