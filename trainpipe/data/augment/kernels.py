"""Batched image kernels behind `trainpipe.data.augment` (the per-sample v2 transforms are in `transforms`).

torchvision's functional ops take one parameter per call (one angle, one sigma, one
brightness factor), so they cannot give each image of a batch its own draw. These kernels
take one parameter per sample as a tensor and reproduce torchvision's pixel conventions
(centre-of-pixel grids, fill masks, its Gaussian kernel), so that a batched op and its
per-sample torchvision transform give the same image for the same parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def crop_at(padded: torch.Tensor, top: torch.Tensor, left: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Per-sample windows padded[b, :, top[b]:top[b]+h, left[b]:left[b]+w], as one gather."""
    b, c, ph, pw = padded.shape
    rows = top.view(b, 1, 1) + torch.arange(h, device=padded.device).view(1, h, 1)
    cols = left.view(b, 1, 1) + torch.arange(w, device=padded.device).view(1, 1, w)
    index = (rows * pw + cols).view(b, 1, h * w).expand(b, c, h * w)
    return padded.reshape(b, c, ph * pw).gather(2, index).view(b, c, h, w)


def _centred_pixels(h: int, w: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(h, w, 3) homogeneous pixel-centre coordinates with (0, 0) at the image centre."""
    ys = torch.linspace((1.0 - h) * 0.5, (h - 1.0) * 0.5, h, dtype=dtype, device=device)
    xs = torch.linspace((1.0 - w) * 0.5, (w - 1.0) * 0.5, w, dtype=dtype, device=device)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((gx, gy, torch.ones_like(gx)), dim=-1)


def rotation_grids(degrees: torch.Tensor, h: int, w: int, dtype: torch.dtype) -> torch.Tensor:
    """grid_sample grids (B, h, w, 2) rotating each image counter-clockwise by degrees[b]."""
    rad = torch.deg2rad(degrees.to(dtype))
    cos, sin = torch.cos(rad), torch.sin(rad)
    zero = torch.zeros_like(cos)
    # The inverse rotation of torchvision's rotate() (output pixel -> input pixel), each row
    # scaled to grid_sample's [-1, 1] units.
    row_x = torch.stack((cos, -sin, zero), dim=1) / (0.5 * w)
    row_y = torch.stack((sin, cos, zero), dim=1) / (0.5 * h)
    theta = torch.stack((row_x, row_y), dim=2)  # (B, 3, 2)
    pixels = _centred_pixels(h, w, dtype, degrees.device).view(1, h * w, 3)
    return (pixels @ theta).view(-1, h, w, 2)


def perspective_grids(
    end_x: torch.Tensor, end_y: torch.Tensor, h: int, w: int, dtype: torch.dtype
) -> torch.Tensor:
    """Grids (B, h, w, 2) mapping the image corners to end_x, end_y (B, 4) in pixels.

    Corners run top-left, top-right, bottom-right, bottom-left. The 8 homography
    coefficients solve torchvision's `_get_perspective_coeffs` system for all samples at
    once; `solve_ex` skips the error check that would wait on the device. The system is
    solved in float32 (Apple's MPS has no float64) on coordinates scaled to [0, 1], where it
    is well conditioned, and the coefficients are scaled back to pixels.
    """
    device = end_x.device
    # u, v scale pixels to [0, 1]; the solved homography H' of the scaled corners gives the
    # pixel one as H = D^-1 H' D with D = diag(u, v, 1).
    u, v = 1.0 / max(w - 1.0, 1.0), 1.0 / max(h - 1.0, 1.0)
    ex, ey = end_x.float() * u, end_y.float() * v
    corner = torch.arange(4, device=device).expand_as(ex)  # TL, TR, BR, BL
    sx = ((corner == 1) | (corner == 2)).float()
    sy = (corner >= 2).float()
    one, zero = torch.ones_like(ex), torch.zeros_like(ex)
    row_x = torch.stack((ex, ey, one, zero, zero, zero, -sx * ex, -sx * ey), dim=-1)
    row_y = torch.stack((zero, zero, zero, ex, ey, one, -sy * ex, -sy * ey), dim=-1)
    a = torch.stack((row_x, row_y), dim=2).view(-1, 8, 8)
    rhs = torch.stack((sx, sy), dim=2).view(-1, 8)
    c = torch.linalg.solve_ex(a, rhs).result
    scale = torch.tensor([1.0, v / u, 1.0 / u, u / v, 1.0, 1.0 / v, u, v], device=device)
    coeffs = (c * scale).to(dtype)
    ys = torch.linspace(0.5, h - 0.5, h, dtype=dtype, device=device)
    xs = torch.linspace(0.5, w - 0.5, w, dtype=dtype, device=device)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    pixels = torch.stack((gx, gy, torch.ones_like(gx)), dim=-1).view(1, h * w, 3)
    numer_x = pixels @ (coeffs[:, 0:3] / (0.5 * w)).unsqueeze(2)
    numer_y = pixels @ (coeffs[:, 3:6] / (0.5 * h)).unsqueeze(2)
    numer = torch.cat((numer_x, numer_y), dim=2)
    denom = pixels @ torch.cat((coeffs[:, 6:], torch.ones_like(coeffs[:, :1])), dim=1).unsqueeze(2)
    return (numer / denom - 1.0).view(-1, h, w, 2)


def warp(x: torch.Tensor, grids: torch.Tensor, mode: str, fill: float) -> torch.Tensor:
    """grid_sample with torchvision's fill rule: a ones channel is warped along and tells
    how much of each output pixel came from outside the image."""
    ones = torch.ones_like(x[:, :1])
    out = F.grid_sample(
        torch.cat((x, ones), dim=1), grids, mode=mode, padding_mode="zeros", align_corners=False
    )
    img, mask = out[:, :-1], out[:, -1:]
    if mode == "nearest":
        return torch.where(mask < 0.5, torch.full_like(img, fill), img)
    return (img - fill) * mask + fill


# ---------------------------------------------------------------- colour


def _blend(a: torch.Tensor, b: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    r = ratio.view(-1, 1, 1, 1).to(a.dtype)
    return (a * r + b * (1.0 - r)).clamp_(0.0, 1.0)


def _grey(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(dim=1)
    return (r * 0.2989 + g * 0.587 + b * 0.114).unsqueeze(1)


def _rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(dim=1)
    maxc, minc = x.amax(dim=1), x.amin(dim=1)
    delta = maxc - minc
    flat = delta == 0
    s = delta / torch.where(flat, torch.ones_like(maxc), maxc)
    d = torch.where(flat, torch.ones_like(delta), delta)
    h = torch.where(maxc == r, (g - b) / d, torch.where(maxc == g, 2.0 + (b - r) / d, 4.0 + (r - g) / d))
    return torch.stack(((h / 6.0).remainder(1.0), s, maxc), dim=1)


def _hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    h, s, v = hsv.unbind(dim=1)
    # The closed form f(n) = v - v*s*clamp(min(k, 4 - k), 0, 1), k = (n + 6h) mod 6, for
    # n = 5, 3, 1 (R, G, B): no per-sector gather, so it batches without index tensors.
    n = torch.arange(5.0, 0.0, -2.0, dtype=hsv.dtype, device=hsv.device).view(1, 3, 1, 1)
    k = (n + h.unsqueeze(1) * 6.0).remainder(6.0)
    return v.unsqueeze(1) - (v * s).unsqueeze(1) * torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)


def adjust_colors(
    x: torch.Tensor,
    *,
    brightness: torch.Tensor | None = None,
    contrast: torch.Tensor | None = None,
    saturation: torch.Tensor | None = None,
    hue: torch.Tensor | None = None,
    order: torch.Tensor | None = None,
) -> torch.Tensor:
    """torchvision's adjust_brightness/contrast/saturation/hue with one factor per sample.

    `order` (B, 4) is a permutation of 0..3 per sample (brightness, contrast, saturation,
    hue: the numbering of ColorJitter's `fn_idx`), the order in which that sample gets
    its adjustments; None applies them in that numbering's order. Saturation and hue
    leave 1-channel images unchanged, as torchvision (and PIL) do.
    """
    rgb = x.shape[1] == 3
    factors = [brightness, contrast, saturation if rgb else None, hue if rgb else None]
    active = [i for i, f in enumerate(factors) if f is not None]
    if order is None or len(active) < 2:
        for i in active:
            x = _ADJUST[i](x, factors[i])
        return x
    # A different order per sample, with no host sync and no data-dependent shapes: at
    # each position every active adjustment runs on the whole batch, with the identity
    # factor for the samples whose turn it is not (exact: x * 1 + m * 0 == x; hue, whose
    # HSV round trip is not exact, is selected instead). n active adjustments cost n * n
    # passes instead of n.
    # Each active adjustment's position among the active ones (a rank: argsort twice).
    rank = order.argsort(dim=1)[:, active].argsort(dim=1).argsort(dim=1)
    for k in range(len(active)):
        for j, i in enumerate(active):
            now = rank[:, j] == k
            if i == 3:
                x = torch.where(now.view(-1, 1, 1, 1), _ADJUST[3](x, factors[3]), x)
            else:
                x = _ADJUST[i](x, torch.where(now, factors[i], torch.ones_like(factors[i])))
    return x


def _brightness(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return (x * f.view(-1, 1, 1, 1).to(x.dtype)).clamp(0.0, 1.0)


def _contrast(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    mean = (_grey(x) if x.shape[1] == 3 else x).mean(dim=(-3, -2, -1), keepdim=True)
    return _blend(x, mean, f)


def _saturation(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return _blend(x, _grey(x), f)


def _hue(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    hsv = _rgb_to_hsv(x)
    shifted = (hsv[:, 0] + f.view(-1, 1, 1).to(x.dtype)).remainder(1.0)
    return _hsv_to_rgb(torch.cat((shifted.unsqueeze(1), hsv[:, 1:]), dim=1))


_ADJUST = (_brightness, _contrast, _saturation, _hue)


# ---------------------------------------------------------------- blur and erasing


def _gaussian_taps(size: int, sigmas: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # torchvision's kernel: positions spread over +-(k-1)/(2*sqrt 2) and exp(-(x/sigma)^2).
    lim = (size - 1) / (2.0 * 2.0**0.5)
    pos = torch.linspace(-lim, lim, size, dtype=dtype, device=sigmas.device)
    return torch.softmax(-(pos.view(1, -1) / sigmas.view(-1, 1).to(dtype)).pow(2), dim=1)


def gaussian_blur(x: torch.Tensor, sigmas: torch.Tensor, kx: int, ky: int) -> torch.Tensor:
    """torchvision's gaussian_blur (reflect padding) with one sigma per sample, as two
    separable passes; the loops run over kernel taps, never over samples."""
    h, w = x.shape[-2:]
    padded = F.pad(x, (kx // 2, kx // 2, ky // 2, ky // 2), mode="reflect")
    taps_x, taps_y = _gaussian_taps(kx, sigmas, x.dtype), _gaussian_taps(ky, sigmas, x.dtype)
    rows = sum(taps_x[:, i].view(-1, 1, 1, 1) * padded[..., i : i + w] for i in range(kx))
    return sum(taps_y[:, j].view(-1, 1, 1, 1) * rows[..., j : j + h, :] for j in range(ky))


def erase_boxes(
    x: torch.Tensor,
    top: torch.Tensor,
    left: torch.Tensor,
    height: torch.Tensor,
    width: torch.Tensor,
    apply: torch.Tensor,
    fill: torch.Tensor,
) -> torch.Tensor:
    """Set box b of image b to `fill` (broadcastable to x) where apply[b] is true."""
    h, w = x.shape[-2:]
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    top, left = top.view(-1, 1, 1), left.view(-1, 1, 1)
    inside = (
        (rows >= top) & (rows < top + height.view(-1, 1, 1))
        & (cols >= left) & (cols < left + width.view(-1, 1, 1))
        & apply.view(-1, 1, 1)
    )
    return torch.where(inside.unsqueeze(1), fill.to(x.dtype), x)
