"""Augmentation ops (batched and torchvision forms), pipelines, and MixUp / CutMix."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from trainpipe.config import MixConfig, augment_specs, validate
from trainpipe.data.augment import AugmentOp, apply_batch, build_pipeline, stream_transform
from trainpipe.data.augment.kernels import adjust_colors, perspective_grids, rotation_grids, warp
from trainpipe.data.augment.mix import build_mix, cutmix_boxes, sample_beta
from trainpipe.errors import ConfigError
from trainpipe.registry import AUGMENTS


def gen(seed: int = 0, device: str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def images(b: int, c: int = 3, h: int = 16, w: int = 16, seed: int = 0, device: str = "cpu") -> torch.Tensor:
    # Values in [0.1, 1]: never equal to a fill of 0, so erased or filled pixels are visible.
    return (torch.rand(b, c, h, w, generator=gen(seed)) * 0.9 + 0.1).to(device)


def one(spec) -> AugmentOp:
    (op,) = build_pipeline(augment_specs([spec]))
    return op


def binomial_bounds(n: int, p: float, sds: float = 5.0) -> tuple[float, float]:
    sd = math.sqrt(n * p * (1 - p))
    return n * p - sds * sd, n * p + sds * sd


# ---------------------------------------------------------------- every registered op


@pytest.mark.parametrize("name", AUGMENTS.names())
@pytest.mark.parametrize("channels", [1, 3])
def test_every_op_keeps_shape_and_range_in_both_forms(name: str, channels: int) -> None:
    op = one(name)
    x = images(6, channels)
    y = op.batch(x, gen())
    assert y.shape == x.shape and y.dtype == x.dtype
    assert torch.isfinite(y).all() and y.min() >= 0 and y.max() <= 1
    out = op.transform()(x[0])
    assert out.shape == x[0].shape and out.min() >= 0 and out.max() <= 1


STRONG = {  # settings under which every sample is visibly changed by its own draw
    "random_crop": {"padding": 4},
    "translate": {"fraction": 0.25},
    "hflip": {"p": 0.5},
    "vflip": {"p": 0.5},
    "rotation": {"degrees": 40},
    "perspective": {"p": 1.0},
    "color_jitter": {"brightness": 0.5, "contrast": 0.5, "saturation": 0.5, "hue": 0.3},
    "gaussian_blur": {"kernel_size": 5, "sigma": [0.3, 3.0]},
    "random_erasing": {"p": 1.0},
    "cutout": {"size": 6},
}


def test_strong_settings_cover_every_registered_op() -> None:
    assert sorted(STRONG) == AUGMENTS.names()


@pytest.mark.parametrize("name", sorted(STRONG))
def test_same_seed_same_output_and_other_seed_differs(name: str) -> None:
    op = one({name: STRONG[name]})
    x = images(32)
    a, b, c = op.batch(x, gen(1)), op.batch(x, gen(1)), op.batch(x, gen(2))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("name", sorted(STRONG))
def test_each_sample_gets_its_own_draw(name: str) -> None:
    # The same image repeated: a per-batch draw would give identical outputs.
    op = one({name: STRONG[name]})
    x = images(1).expand(32, -1, -1, -1).contiguous()
    y = op.batch(x, gen(3)).flatten(1)
    distinct = torch.unique(y, dim=0).shape[0]
    assert distinct >= (2 if name in ("hflip", "vflip") else 16)


IDENTITY = {
    "random_crop": {"padding": 0},
    "translate": {"fraction": 0.0},
    "hflip": {"p": 0.0},
    "vflip": {"p": 0.0},
    "rotation": {"degrees": 0},
    "perspective": {"p": 0.0},
    "color_jitter": {},
    "gaussian_blur": {"kernel_size": 1},
    "random_erasing": {"p": 0.0},
    "cutout": {"p": 0.0},
}


def test_identity_settings_cover_every_registered_op() -> None:
    assert sorted(IDENTITY) == AUGMENTS.names()


@pytest.mark.parametrize("name", sorted(IDENTITY))
@pytest.mark.parametrize("channels", [1, 3])
def test_identity_settings_leave_images_unchanged_in_both_forms(name: str, channels: int) -> None:
    op = one({name: IDENTITY[name]})
    x = images(5, channels)
    torch.testing.assert_close(op.batch(x, gen()), x, atol=1e-6, rtol=0)
    t = op.transform()
    for img in x:
        torch.testing.assert_close(t(img), img, atol=1e-6, rtol=0)


FIXED = [  # settings with no randomness left: the batched form must equal torchvision's
    ("hflip", {"p": 1.0}),
    ("vflip", {"p": 1.0}),
    ("rotation", {"degrees": [30, 30]}),
    ("rotation", {"degrees": [90, 90], "interpolation": "nearest"}),
    ("rotation", {"degrees": [-17, -17], "fill": 0.5}),
    ("color_jitter", {"brightness": [1.4, 1.4]}),
    ("color_jitter", {"contrast": [0.5, 0.5]}),
    ("color_jitter", {"saturation": [1.8, 1.8]}),
    ("color_jitter", {"hue": [0.2, 0.2]}),
    ("color_jitter", {"hue": [-0.35, -0.35]}),
    ("gaussian_blur", {"kernel_size": 5, "sigma": 1.3}),
    ("gaussian_blur", {"kernel_size": [3, 7], "sigma": 0.8}),
]


@pytest.mark.parametrize(("name", "options"), FIXED)
@pytest.mark.parametrize("channels", [1, 3])
def test_batched_form_matches_torchvision_for_fixed_parameters(
    name: str, options: dict, channels: int
) -> None:
    op = one({name: options})
    x = images(4, channels, 12, 12)
    t = op.transform()
    expected = torch.stack([t(img) for img in x])
    torch.testing.assert_close(op.batch(x, gen()), expected, atol=2e-5, rtol=0)


# ---------------------------------------------------------------- flips and crops


@pytest.mark.parametrize(("name", "dim"), [("hflip", -1), ("vflip", -2)])
def test_flip_mirrors_about_half_the_batch_exactly(name: str, dim: int) -> None:
    x = images(1000, 1, 3, 3)
    y = one(name).batch(x, gen(5))
    flipped = (y == x.flip(dim)).flatten(1).all(1)
    kept = (y == x).flatten(1).all(1)
    assert (flipped ^ kept).all()  # every image is either exactly mirrored or untouched
    lo, hi = binomial_bounds(1000, 0.5)
    assert lo <= flipped.sum() <= hi


def windows(padded: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """All (h, w) windows: (B, C, rows, cols, h, w)."""
    return padded.unfold(2, h, 1).unfold(3, w, 1)


@pytest.mark.parametrize(
    ("mode", "torch_mode"), [("reflect", "reflect"), ("zero", "constant"), ("edge", "replicate")]
)
@pytest.mark.parametrize("size", [None, [10, 14]])
def test_random_crop_is_an_exact_window_of_the_padded_image(mode: str, torch_mode: str, size) -> None:
    x = images(800, 1, 12, 12)
    op = one({"random_crop": {"padding": 3, "padding_mode": mode, "size": size}})
    y = op.batch(x, gen(7))
    h, w = size or (12, 12)
    assert y.shape == (800, 1, h, w)
    win = windows(torch.nn.functional.pad(x, (3,) * 4, mode=torch_mode), h, w)
    match = (win == y[:, :, None, None]).all(dim=(1, 4, 5))  # (B, rows, cols)
    assert match.any(dim=(1, 2)).all()
    # Offsets reach every position of the padded image, corners included.
    used = match.any(dim=0)
    assert used.all()


def test_random_crop_stream_form_is_a_window_too() -> None:
    x = images(30, 3, 10, 10)
    t = one({"random_crop": {"padding": 2, "padding_mode": "zero"}}).transform()
    win = windows(torch.nn.functional.pad(x, (2,) * 4), 10, 10)
    for i, img in enumerate(x):
        out = t(img)
        assert out.shape == img.shape
        assert (win[i] == out[:, None, None]).all(dim=(0, 3, 4)).any()


def test_random_crop_larger_than_padded_image_is_a_config_error() -> None:
    op = one({"random_crop": {"size": 40, "padding": 2}})
    with pytest.raises(ConfigError, match="larger than the padded image"):
        op.batch(images(2), gen())


def test_translate_shifts_by_whole_pixels_like_torchvision() -> None:
    x = images(100, 3, 16, 16)
    y = one({"translate": {"fraction": 0.25}}).batch(x, gen(8))
    assert y.shape == x.shape
    shifts = set()
    for i in range(100):
        found = [
            (dx, dy)
            for dx in range(-4, 5)
            for dy in range(-4, 5)
            if torch.equal(y[i], TF.affine(x[i], angle=0.0, translate=[dx, dy], scale=1.0, shear=[0.0, 0.0]))
        ]
        assert found, f"sample {i} is not a whole-pixel translation within 25%"
        shifts.add(found[0])
    assert len(shifts) > 30  # shifts are spread over the allowed range


# ---------------------------------------------------------------- warps


def test_rotation_by_zero_degrees_is_identity() -> None:
    x = images(8)
    torch.testing.assert_close(one({"rotation": {"degrees": 0}}).batch(x, gen()), x, atol=1e-6, rtol=0)


def test_rotation_angles_are_drawn_per_sample_within_the_range() -> None:
    x = images(32, 1, 15, 15)
    y = one({"rotation": {"degrees": [10, 20]}}).batch(x, gen(4))
    angles = torch.arange(0.0, 30.01, 0.1)
    candidates = torch.stack(
        [TF.rotate(x, float(a), interpolation=v2.InterpolationMode.BILINEAR, fill=0.0) for a in angles], dim=1
    )  # (B, angles, C, H, W)
    error = (candidates - y[:, None]).abs().flatten(2).amax(2)
    best = angles[error.argmin(1)]
    assert error.min(1).values.max() < 0.05  # each output is a rotation of its input
    assert best.min() >= 9.9 and best.max() <= 20.1
    assert best.max() - best.min() >= 5  # spread over the range


def test_perspective_grid_matches_torchvision_for_given_corners() -> None:
    x = images(3, 3, 20, 24)
    ends = [
        [[2, 1], [21, 0], [23, 17], [0, 19]],
        [[0, 0], [23, 4], [19, 19], [5, 15]],
        [[4, 3], [20, 2], [22, 19], [1, 16]],
    ]
    end_x = torch.tensor([[p[0] for p in e] for e in ends])
    end_y = torch.tensor([[p[1] for p in e] for e in ends])
    ours = warp(x, perspective_grids(end_x, end_y, 20, 24, torch.float32), "bilinear", 0.0)
    start = [[0, 0], [23, 0], [23, 19], [0, 19]]
    for i in range(3):
        expected = TF.perspective(x[i], start, ends[i], interpolation=v2.InterpolationMode.BILINEAR, fill=0.0)
        torch.testing.assert_close(ours[i], expected, atol=1e-4, rtol=0)


def test_perspective_on_small_images_fills_the_horizon_pixel_instead_of_nan() -> None:
    # These corners of an 8x8 image put the homography's horizon through pixel (6, 7):
    # torchvision's own perspective returns NaN there, and a digits run stopped on a
    # non-finite loss. Both forms of the op give the fill there and torchvision's values elsewhere.
    x = images(1, 1, 8, 8)
    start, end = [[0, 0], [7, 0], [7, 7], [0, 7]], [[0, 2], [7, 1], [5, 5], [2, 6]]
    plain = TF.perspective(x[0], start, end, interpolation=v2.InterpolationMode.BILINEAR, fill=0.25)
    assert torch.isnan(plain[0, 6, 7])  # the case being guarded
    end_x, end_y = torch.tensor([[e[0] for e in end]]), torch.tensor([[e[1] for e in end]])
    ours = warp(x, perspective_grids(end_x, end_y, 8, 8, torch.float32), "bilinear", 0.25).nan_to_num(nan=0.25)
    from torchvision.transforms.v2._geometry import _get_perspective_coeffs

    from trainpipe.data.stream_transforms import Perspective

    stream = Perspective(0.5, 1.0, fill=0.25).transform(x[0], {"coefficients": _get_perspective_coeffs(start, end)})
    finite = ~torch.isnan(plain)
    for out in (ours[0], stream):
        assert torch.isfinite(out).all() and out[0, 6, 7] == 0.25
        torch.testing.assert_close(out[finite], plain[finite], atol=1e-4, rtol=0)
    op = one({"perspective": {"p": 1.0}})
    for seed in range(40):  # the batched op, with its own draws, on many batches of 8x8 images
        assert torch.isfinite(op.batch(images(32, 1, 8, 8), gen(seed))).all()


def test_perspective_applies_with_probability_p() -> None:
    x = images(400, 1, 8, 8)
    y = one({"perspective": {"p": 0.3, "distortion_scale": 0.8}}).batch(x, gen(9))
    changed = (y != x).flatten(1).any(1)
    lo, hi = binomial_bounds(400, 0.3)
    assert lo <= changed.sum() <= hi


# ---------------------------------------------------------------- colour and blur


def test_brightness_factor_is_per_sample_and_within_range() -> None:
    x = images(64) * 0.5  # no clamping at 1 for factors up to 1.6
    y = one({"color_jitter": {"brightness": 0.6}}).batch(x, gen(2))
    ratio = (y / x).flatten(1)
    factor = ratio.mean(1)
    torch.testing.assert_close(ratio, factor[:, None].expand_as(ratio), atol=1e-5, rtol=0)
    assert factor.min() >= 0.4 - 1e-6 and factor.max() <= 1.6 + 1e-6
    assert factor.std() > 0.2  # spread over the range, not one factor for the batch


@pytest.mark.parametrize("component", ["brightness", "contrast", "saturation", "hue"])
def test_colour_kernels_match_torchvision_with_a_factor_per_sample(component: str) -> None:
    x = images(6, 3, 8, 8, seed=3)
    if component == "hue":
        factors = torch.tensor([0.0, 0.1, -0.2, 0.45, -0.5, 0.3])
    else:
        factors = torch.linspace(0.2, 1.9, 6)
    fn = {"brightness": TF.adjust_brightness, "contrast": TF.adjust_contrast,
          "saturation": TF.adjust_saturation, "hue": TF.adjust_hue}[component]
    expected = torch.stack([fn(img, float(f)) for img, f in zip(x, factors)])
    torch.testing.assert_close(adjust_colors(x, **{component: factors}), expected, atol=2e-5, rtol=0)


def test_colour_kernels_follow_a_per_sample_order_like_torchvision() -> None:
    b = 24
    x = images(b, 3, 8, 8, seed=4)
    g = gen(4)
    factors = {"brightness": torch.rand(b, generator=g) + 0.5, "contrast": torch.rand(b, generator=g) + 0.5,
               "saturation": torch.rand(b, generator=g) * 2, "hue": torch.rand(b, generator=g) - 0.5}
    order = torch.stack([torch.randperm(4, generator=g) for _ in range(b)])
    fns = [(TF.adjust_brightness, "brightness"), (TF.adjust_contrast, "contrast"),
           (TF.adjust_saturation, "saturation"), (TF.adjust_hue, "hue")]  # ColorJitter's fn_idx numbering
    expected = []
    for i, img in enumerate(x):
        for fn_id in order[i].tolist():
            fn, name = fns[fn_id]
            img = fn(img, float(factors[name][i]))
        expected.append(img)
    torch.testing.assert_close(adjust_colors(x, **factors, order=order), torch.stack(expected), atol=3e-5, rtol=0)


def test_colour_jitter_draws_the_order_per_sample_like_torchvision() -> None:
    # Fixed factors: only the order is random, and brightness-then-contrast differs from the reverse.
    options = {"brightness": [1.6, 1.6], "contrast": [0.3, 0.3]}
    op = one({"color_jitter": options})
    n = 400
    x = images(1, 3, 8, 8, seed=5).expand(n, -1, -1, -1).contiguous()
    torch.manual_seed(0)
    t = op.transform()
    ref = torch.stack([t(x[0]) for _ in range(64)])
    variants = torch.unique(ref.flatten(1).round(decimals=4), dim=0)
    assert len(variants) == 2  # torchvision: one image per order of the two adjustments
    y = op.batch(x, gen(6)).flatten(1).round(decimals=4)
    which = (y[:, None] == variants[None]).all(dim=2)  # (n, 2)
    assert which.sum(dim=1).eq(1).all()  # every sample is one of torchvision's two images
    lo, hi = binomial_bounds(n, 0.5)
    assert lo <= which[:, 0].sum() <= hi


def test_blur_keeps_the_mean_and_removes_high_frequencies() -> None:
    x = images(16, 3, 32, 32)
    y = one({"gaussian_blur": {"kernel_size": 7, "sigma": [1.0, 2.0]}}).batch(x, gen())

    def detail(t: torch.Tensor) -> torch.Tensor:  # energy of neighbour differences, per image
        return (t.diff(dim=-1) ** 2).flatten(1).mean(1) + (t.diff(dim=-2) ** 2).flatten(1).mean(1)

    torch.testing.assert_close(y.mean(dim=(1, 2, 3)), x.mean(dim=(1, 2, 3)), atol=5e-3, rtol=0)
    assert (detail(y) < 0.3 * detail(x)).all()


# ---------------------------------------------------------------- erasing and cutout


def erased_boxes(x: torch.Tensor, y: torch.Tensor) -> list[tuple[int, int] | None]:
    """(height, width) of the erased region of each image, asserting it is one rectangle."""
    boxes = []
    for xi, yi in zip(x, y):
        changed = (yi != xi).any(0)
        if not changed.any():
            boxes.append(None)
            continue
        rows, cols = changed.any(1).nonzero().flatten(), changed.any(0).nonzero().flatten()
        h, w = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
        assert changed.sum() == h * w, "erased pixels do not form one rectangle"
        boxes.append((h, w))
    return boxes


@pytest.mark.parametrize("form", ["batch", "stream"])
def test_erased_areas_are_within_the_asked_scale_range(form: str) -> None:
    scale, ratio = (0.05, 0.2), (0.5, 2.0)
    op = one({"random_erasing": {"p": 1.0, "scale": list(scale), "ratio": list(ratio)}})
    x = images(300 if form == "batch" else 60, 3, 40, 40)
    y = op.batch(x, gen(11)) if form == "batch" else torch.stack([op.transform()(img) for img in x])
    areas = []
    for box in erased_boxes(x, y):
        assert box is not None  # with p=1 and these ranges a box always fits
        h, w = box
        slack = 0.5 * (h + w) + 0.25  # h and w are each rounded to whole pixels
        assert scale[0] * 1600 - slack <= h * w <= scale[1] * 1600 + slack
        assert ratio[0] * 0.5 <= h / w <= ratio[1] * 2
        areas.append(h * w / 1600)
    assert min(areas) < 0.08 and max(areas) > 0.17  # the whole range is used


def test_erasing_fills_with_the_given_values_and_respects_p() -> None:
    x = images(400, 3, 16, 16)
    y = one({"random_erasing": {"p": 0.5, "value": [0.2, 0.4, 0.6]}}).batch(x, gen(12))
    erased = (y != x).flatten(1).any(1)
    lo, hi = binomial_bounds(400, 0.5)
    assert lo <= erased.sum() <= hi
    fills = y.permute(1, 0, 2, 3)[:, (y != x).any(1)]
    assert torch.equal(fills, torch.tensor([0.2, 0.4, 0.6])[:, None].expand_as(fills))


def test_cutout_erases_a_square_of_the_asked_size_clipped_at_the_border() -> None:
    x = images(300, 1, 20, 20)
    boxes = erased_boxes(x, one({"cutout": {"size": 6}}).batch(x, gen(13)))
    clipped = 0
    for box in boxes:
        assert box is not None
        h, w = box
        assert h <= 6 and w <= 6
        clipped += (h, w) != (6, 6)
    assert boxes.count((6, 6)) > 150  # away from the border the square is whole
    assert clipped > 0  # near the border it is clipped, not moved inwards


def test_cutout_stream_form_erases_squares_too() -> None:
    x = images(40, 3, 20, 20)
    t = one({"cutout": {"size": 5, "value": 0.0}}).transform()
    boxes = erased_boxes(x, torch.stack([t(img) for img in x]))
    assert all(b is not None and b[0] <= 5 and b[1] <= 5 for b in boxes)
    assert (5, 5) in boxes


# ---------------------------------------------------------------- pipelines and errors


def test_spec_forms_build_the_same_op() -> None:
    x = images(8)
    outs = [
        one(spec).batch(x, gen(4))
        for spec in ({"name": "random_crop", "padding": 2}, {"random_crop": {"padding": 2}})
    ]
    assert torch.equal(outs[0], outs[1])
    assert one("hflip").name == "hflip"


def test_apply_batch_runs_ops_in_order_and_stream_transform_composes_them() -> None:
    ops = build_pipeline(augment_specs(["hflip", {"random_crop": {"padding": 2}}, {"color_jitter": {"brightness": 0.3}}]))
    x = images(8)
    g1, g2 = gen(6), gen(6)
    expected = x
    for op in ops:
        expected = op.batch(expected, g2)
    assert torch.equal(apply_batch(ops, x, g1), expected)
    t = stream_transform(ops)
    assert isinstance(t, v2.Compose) and len(t.transforms) == 3
    assert t(x[0]).shape == x[0].shape
    assert isinstance(stream_transform([]), v2.Compose)


def test_any_torchvision_v2_class_works_by_name_in_the_stream_form() -> None:
    ops = build_pipeline(augment_specs(["RandAugment", {"TrivialAugmentWide": {"num_magnitude_bins": 11}}]))
    assert [op.has_batched for op in ops] == [False, False]
    assert isinstance(ops[0].transform(), v2.RandAugment)
    assert ops[1].transform().num_magnitude_bins == 11
    assert stream_transform(ops)(images(1)[0]).shape == (3, 16, 16)
    assert "AutoAugment" in AUGMENTS  # through the registry's fallback
    with pytest.raises(ConfigError, match="no batched form"):
        apply_batch(ops, images(2), gen())


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ({"random_crop": {"padding": -1}}, ["padding", "greater than or equal to 0"]),
        ({"random_crop": {"padding": "four"}}, ["padding", "integer"]),
        ({"random_crop": {"padding_mode": "mirror"}}, ["padding_mode", "reflect"]),
        ({"rotation": {"degree": 10}}, ["degree: unknown key", "did you mean data.augment[1].degrees"]),
        ({"name": "random_erasing", "scale": [0.5, 0.1]}, ["scale", "min <= max"]),
        ({"random_erasing": {"ratio": [0, 1]}}, ["ratio"]),
        ({"hflip": {"p": 1.5}}, ["p: input should be less than or equal to 1"]),
        ({"gaussian_blur": {"kernel_size": 4}}, ["kernel_size: must be odd"]),
        ({"gaussian_blur": {"sigma": [2.0, 1.0]}}, ["sigma"]),
        ({"color_jitter": {"hue": 0.7}}, ["hue", "[-0.5, 0.5]"]),
        ({"color_jitter": {"brightness": -0.1}}, ["brightness: must be >= 0"]),
        ({"cutout": {"size": 0}}, ["size: input should be greater than 0"]),
        ({"perspective": {"distortion_scale": 2}}, ["distortion_scale"]),
        ({"translate": {"fraction": 1.5}}, ["fraction"]),
        ({"RandAugment": {"num_op": 2}}, ["num_op", "did you mean num_ops"]),
        ({"RandomResizedCrop": {"size": 32, "scale": "big"}}, ["RandomResizedCrop rejected"]),
        ({"MixUp": {"alpha": 0.2}}, ["data.mix"]),
        ("hfip", ["unknown augment 'hfip'", "did you mean hflip"]),
        ("RandAugmnt", ["did you mean RandAugment"]),
        (["hflip"], ["expected an augmentation"]),
    ],
)
def test_bad_arguments_raise_config_error_naming_the_list_entry(spec, words: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        build_pipeline(augment_specs(["hflip", spec]))
    message = str(info.value)
    assert message.startswith("data.augment[1]")
    for word in words:
        assert word in message
    assert "\n" not in message


def test_error_key_follows_the_given_config_key() -> None:
    with pytest.raises(ConfigError, match=r"^aug\.train\[0\]\.p: "):
        build_pipeline(augment_specs([{"hflip": {"p": -1}}], key="aug.train"))


# ---------------------------------------------------------------- mixing


def test_beta_sampler_follows_the_beta_distribution() -> None:
    for alpha in (0.2, 1.0, 3.0):
        draws = sample_beta(torch.full((4000,), alpha), gen(21)).numpy()
        assert stats.kstest(draws, stats.beta(alpha, alpha).cdf).pvalue > 1e-3


@pytest.mark.parametrize(
    "cfg",
    [
        {"mixup_alpha": 0.8},
        {"cutmix_alpha": 1.0},
        {"mixup_alpha": 0.8, "cutmix_alpha": 1.0, "mode": "elem"},
        {"mixup_alpha": 0.4, "cutmix_alpha": 1.0, "prob": 0.5},
    ],
)
def test_mixed_targets_are_distributions_over_the_two_labels(cfg: dict) -> None:
    mix = build_mix(MixConfig(**cfg), 10)
    x, y = images(16), torch.randint(0, 10, (16,), generator=gen())
    for seed in range(5):
        mixed, target = mix(x, y, gen(seed))
        assert mixed.shape == x.shape and target.shape == (16, 10) and target.dtype == torch.float32
        torch.testing.assert_close(target.sum(1), torch.ones(16))
        smooth = 0.0  # the mixer leaves smoothing to the loss (train.label_smoothing)
        others = torch.ones(16, 10, dtype=torch.bool)
        others[torch.arange(16), y] = False
        others[torch.arange(16), y.flip(0)] = False
        torch.testing.assert_close(target[others], torch.full_like(target[others], smooth / 10))


def test_mixup_lambda_follows_its_beta_distribution_one_per_batch() -> None:
    mix = build_mix(MixConfig(**{"mixup_alpha": 1.0}), 2)
    x, y = images(2, 1, 2, 2), torch.tensor([0, 1])
    g = gen(30)
    lams = []
    for _ in range(1500):
        mixed, target = mix(x, y, g)
        lam = target[0, 0]
        torch.testing.assert_close(mixed[0], lam * x[0] + (1 - lam) * x[1])
        lams.append(float(lam))
    assert abs(sum(lams) / len(lams) - 0.5) < 0.03
    assert stats.kstest(lams, stats.beta(1.0, 1.0).cdf).pvalue > 1e-3


def test_mixup_lambda_per_sample_in_elem_mode() -> None:
    b = 2000
    mix = build_mix(MixConfig(**{"mixup_alpha": 0.4, "mode": "elem"}), 2)
    x, y = images(b, 1, 2, 2), torch.arange(b) % 2  # sample i and its partner b-1-i differ
    mixed, target = mix(x, y, gen(31))
    lam = target[torch.arange(b), y]
    torch.testing.assert_close(mixed, lam.view(-1, 1, 1, 1) * x + (1 - lam.view(-1, 1, 1, 1)) * x.flip(0))
    assert stats.kstest(lam.numpy(), stats.beta(0.4, 0.4).cdf).pvalue > 1e-3


def test_cutmix_lambda_equals_the_kept_area() -> None:
    b, h, w = 400, 12, 10
    mix = build_mix(MixConfig(**{"cutmix_alpha": 1.0, "mode": "elem"}), 2)
    x = torch.arange(1, b + 1, dtype=torch.float32).view(b, 1, 1, 1).expand(b, 3, h, w).contiguous()
    y = torch.arange(b) % 2
    mixed, target = mix(x, y, gen(32))
    kept = (mixed == x).all(1)
    pasted = (mixed == x.flip(0)).all(1)
    assert (kept ^ pasted).all()  # every pixel is an exact copy of one of the two images
    torch.testing.assert_close(target[torch.arange(b), y], kept.flatten(1).float().mean(1))
    boxes = erased_boxes(x, mixed)
    assert sum(box is not None for box in boxes) > 0.8 * b  # a rectangle was pasted in most


@pytest.mark.parametrize(("h", "w"), [(32, 32), (12, 10)])
def test_cutmix_boxes_are_timms_rand_bbox(h: int, w: int) -> None:
    import numpy as np
    from timm.data.mixup import rand_bbox

    n = 200
    # lam 0.7 on 32x32 cuts int(17.5) = 17 pixels: odd, where a box of cy +- cut // 2 loses one row.
    lam = np.concatenate([[0.7, 0.5, 0.3, 0.0, 1.0], np.random.default_rng(0).uniform(0, 1, n - 5)])
    for i, value in enumerate(lam):
        np.random.seed(i)
        ref = rand_bbox((3, h, w), value)
        np.random.seed(i)  # rand_bbox draws cy, then cx, with numpy's global RNG
        cy, cx = np.random.randint(0, h), np.random.randint(0, w)
        ours = cutmix_boxes(torch.tensor([value], dtype=torch.float64), torch.tensor([cy]), torch.tensor([cx]), h, w)
        assert [int(v) for v in ours] == [int(v) for v in ref], (value, cy, cx)


def test_train_label_smoothing_on_mixed_targets_is_timms_mixup_smoothing() -> None:
    # data.mix has no smoothing key: train.label_smoothing, applied by the loss, gives timm's targets.
    import torch.nn.functional as F
    from timm.data.mixup import mixup_target

    from trainpipe.loop.trainer import soft_cross_entropy

    y = torch.arange(8)  # every sample's partner (the batch reversed) has another class
    _, target = build_mix(MixConfig(mixup_alpha=1.0), 10)(images(8), y, gen(3))
    lam = float(target[0, 0])
    logits = torch.randn(8, 10, generator=gen(4))
    reference = F.cross_entropy(logits, mixup_target(y, 10, lam, smoothing=0.1))
    torch.testing.assert_close(soft_cross_entropy(logits, target, 0.1), reference)


def test_switch_prob_picks_cutmix_for_that_share_of_samples() -> None:
    b = 1000
    mix = build_mix(MixConfig(**{"mixup_alpha": 1.0, "cutmix_alpha": 1.0, "switch_prob": 0.3, "mode": "elem"}), 2)
    x = torch.arange(1, b + 1, dtype=torch.float32).view(b, 1, 1, 1).expand(b, 1, 8, 8).contiguous()
    mixed, _ = mix(x, torch.arange(b) % 2, gen(33))
    exact = ((mixed == x) | (mixed == x.flip(0))).flatten(1).all(1)
    lo, hi = binomial_bounds(b, 0.3)
    assert lo <= exact.sum() <= hi + 5  # a mixup lambda of exactly 0 or 1 is vanishingly rare


def test_mix_prob_leaves_that_share_unmixed_and_seeds_reproduce() -> None:
    b = 1000
    mix = build_mix(MixConfig(**{"mixup_alpha": 1.0, "prob": 0.4, "mode": "elem"}), 2)
    x, y = images(b, 1, 2, 2), torch.arange(b) % 2
    mixed, target = mix(x, y, gen(34))
    unmixed = target[torch.arange(b), y] == 1.0
    lo, hi = binomial_bounds(b, 0.6)
    assert lo <= unmixed.sum() <= hi
    assert torch.equal(mixed[unmixed], x[unmixed])
    again, _ = mix(x, y, gen(34))
    other, _ = mix(x, y, gen(35))
    assert torch.equal(mixed, again) and not torch.equal(mixed, other)


def test_mixing_off_and_bad_mix_options() -> None:
    assert build_mix(None, 10) is None
    assert build_mix(MixConfig(**{}), 10) is None
    assert build_mix(MixConfig(**{"mixup_alpha": 1.0, "prob": 0.0}), 10) is None
    # Bad options are refused by the config, with the rest of it, before any data is read.
    with pytest.raises(ConfigError, match=r"data\.mix\.mixup_alfa: unknown key; did you mean data\.mix\.mixup_alpha"):
        validate({"data": {"mix": {"mixup_alfa": 1.0}}})
    with pytest.raises(ConfigError, match=r"data\.mix\.cutmix_alpha: input should be greater than or equal to 0"):
        validate({"data": {"mix": {"cutmix_alpha": -1}}})
    with pytest.raises(ConfigError, match=r"data\.mix\.mode"):
        validate({"data": {"mix": {"mixup_alpha": 1.0, "mode": "pair"}}})


# ---------------------------------------------------------------- devices


@pytest.mark.cuda
def test_batched_ops_and_mix_never_wait_on_the_host_on_cuda() -> None:
    ops = build_pipeline(augment_specs([{name: opts} for name, opts in STRONG.items()]))
    mix = build_mix(MixConfig(**{"mixup_alpha": 0.8, "cutmix_alpha": 1.0, "mode": "elem"}), 10)
    x = images(64, device="cuda")
    y = torch.randint(0, 10, (64,), device="cuda")
    g = gen(0, "cuda")
    apply_batch(ops, x, g), mix(x, y, g)  # warm-up: lazy CUDA initialisation may sync
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = apply_batch(ops, x, g)
        mixed, target = mix(out, y, g)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert out.device.type == "cuda" and torch.isfinite(mixed).all()


def test_the_config_mix_section_reaches_the_mixer_unchanged() -> None:
    cfg = validate({"data": {"mix": {"cutmix_alpha": 1.0, "prob": 0.5, "mode": "elem"}}})
    mix = build_mix(cfg.data.mix, 3)
    assert mix is not None and mix.cfg is cfg.data.mix  # one schema: the mixer reads the config's section
    assert (mix.cfg.mixup_alpha, mix.cfg.cutmix_alpha, mix.cfg.prob, mix.cfg.mode) == (0.0, 1.0, 0.5, "elem")
    with pytest.raises(ConfigError, match=r"data\.mix\.label_smoothing: unknown key"):
        validate({"data": {"mix": {"cutmix_alpha": 1.0, "label_smoothing": 0.1}}})  # train.label_smoothing


class _Float64OffTheCpu(torch.utils._python_dispatch.TorchDispatchMode):
    """Records every op that makes a float64 tensor on a device other than the CPU: Apple's
    MPS has no float64, so such an op stops a Mac's run."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        out = func(*args, **(kwargs or {}))
        outs = out if isinstance(out, (tuple, list)) else (out,)
        if any(isinstance(t, torch.Tensor) and t.dtype == torch.float64 and t.device.type != "cpu" for t in outs):
            self.seen.append(str(func))
        return out


def test_warps_compute_in_float32_on_the_device() -> None:
    # The `meta` device stands for a GPU: it computes shapes and dtypes, not values.
    end = torch.randint(0, 5, (3, 4), device="meta")
    x = torch.empty(3, 3, 20, 24, device="meta")
    with _Float64OffTheCpu() as mode:
        warp(x, perspective_grids(end, end, 20, 24, torch.float32), "bilinear", 0.0)
        warp(x, rotation_grids(torch.zeros(3, device="meta"), 20, 24, torch.float32), "bilinear", 0.0)
    assert mode.seen == []
