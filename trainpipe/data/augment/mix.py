"""Batch-level MixUp and CutMix (`data.mix`), producing soft targets.

Follows timm's `Mixup` (parameter names, pairing each image with the batch reversed,
CutMix's lambda corrected to the real box area after clipping) but draws every random
number from a `torch.Generator` on the batch's device. Neither existing implementation
can do that: timm draws from numpy's global RNG and `torchvision.transforms.v2.MixUp` /
`CutMix` from torch's global RNG through `torch.distributions.Beta`, so their draws can
be neither seeded per loader nor replayed on resume, and they read lambda on the host.
"""

from __future__ import annotations


import torch

from trainpipe.config.schema import MixConfig

# Marsaglia-Tsang accepts a candidate with probability >= 0.95 for shape >= 1, so with 16
# candidates per draw the chance that none is accepted is below 1e-20.
_CANDIDATES = 16


def _log_gamma(shape: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """log of one Gamma(shape, 1) draw per element, by Marsaglia & Tsang (2000).

    torch's own gamma sampler takes no generator, so it is written here with normal and
    uniform draws from `g`; the candidates are drawn for all elements at once and the
    first accepted one kept, so there is no data-dependent loop or host sync.
    """
    n = shape.shape[0]
    boosted = torch.where(shape < 1.0, shape + 1.0, shape)  # shape < 1: Gamma(a+1) * U^(1/a)
    d = boosted - 1.0 / 3.0
    c = 1.0 / torch.sqrt(9.0 * d)
    z = torch.randn((n, _CANDIDATES), generator=g, device=shape.device)
    u = torch.rand((n, _CANDIDATES), generator=g, device=shape.device)
    v = (1.0 + c[:, None] * z) ** 3
    log_v = torch.log(v.clamp_min(1e-30))
    ok = (v > 0) & (torch.log(u) < 0.5 * z * z + d[:, None] * (1.0 - v + log_v))
    first = ok.int().argmax(dim=1, keepdim=True)
    log_v = torch.where(ok.any(dim=1), log_v.gather(1, first).squeeze(1), torch.zeros_like(d))
    boost_u = 1.0 - torch.rand(n, generator=g, device=shape.device)  # in (0, 1]
    boost = torch.where(shape < 1.0, torch.log(boost_u) / shape, torch.zeros_like(shape))
    return torch.log(d) + log_v + boost


def sample_beta(alpha: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """One Beta(alpha, alpha) draw per element of `alpha` (float, > 0), all from `g`."""
    # X / (X + Y) = sigmoid(log X - log Y): stays finite when both Gammas underflow (small alpha).
    return torch.sigmoid(_log_gamma(alpha, g) - _log_gamma(alpha, g))


def cutmix_boxes(
    lam: torch.Tensor, cy: torch.Tensor, cx: torch.Tensor, h: int, w: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """timm's `rand_bbox` for given centres: a box whose sides are int(sqrt(1 - lam) * side),
    from centre - cut // 2 to centre + (cut + 1) // 2 (so an odd cut keeps its full
    length), clipped at the border. Returns (top, bottom, left, right), ends exclusive."""
    cut = torch.sqrt(1.0 - lam)
    cut_h, cut_w = (cut * h).floor().long(), (cut * w).floor().long()
    y0, y1 = (cy - cut_h // 2).clamp(0, h), (cy + (cut_h + 1) // 2).clamp(0, h)
    x0, x1 = (cx - cut_w // 2).clamp(0, w), (cx + (cut_w + 1) // 2).clamp(0, w)
    return y0, y1, x0, x1


class Mix:
    """`mix(x, y, g) -> (mixed x, soft targets (B, num_classes))`, like timm's Mixup."""

    def __init__(self, cfg: MixConfig, num_classes: int) -> None:
        self.cfg = cfg
        self.num_classes = num_classes

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, g: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cfg, dev = self.cfg, x.device
        b, (h, w) = x.shape[0], x.shape[-2:]
        n = b if cfg.mode == "elem" else 1
        if cfg.mixup_alpha > 0 and cfg.cutmix_alpha > 0:
            use_cutmix = torch.rand(n, generator=g, device=dev) < cfg.switch_prob
        else:
            use_cutmix = torch.full((n,), cfg.cutmix_alpha > 0, device=dev)
        alpha = torch.where(use_cutmix, cfg.cutmix_alpha, cfg.mixup_alpha).float()
        lam = sample_beta(alpha, g)
        lam = torch.where(torch.rand(n, generator=g, device=dev) < cfg.prob, lam, torch.ones_like(lam))

        cy = torch.randint(0, h, (n,), generator=g, device=dev)
        cx = torch.randint(0, w, (n,), generator=g, device=dev)
        y0, y1, x0, x1 = cutmix_boxes(lam, cy, cx, h, w)
        # lambda becomes the area actually kept (timm's correct_lam).
        box_lam = 1.0 - ((y1 - y0) * (x1 - x0)).float() / (h * w)
        lam = torch.where(use_cutmix, box_lam, lam).expand(b)
        use_cutmix = use_cutmix.expand(b)

        rows = torch.arange(h, device=dev).view(1, h, 1)
        cols = torch.arange(w, device=dev).view(1, 1, w)
        in_box = (
            (rows >= y0.view(-1, 1, 1)) & (rows < y1.view(-1, 1, 1))
            & (cols >= x0.view(-1, 1, 1)) & (cols < x1.view(-1, 1, 1))
        ).expand(b, h, w) & use_cutmix.view(-1, 1, 1)
        # Pixels outside a CutMix box keep weight 1, so they stay bit-exact copies.
        weight = torch.where(use_cutmix, torch.ones_like(lam), lam).view(-1, 1, 1, 1).to(x.dtype)
        partner = x.flip(0)
        mixed = torch.where(in_box.unsqueeze(1), partner, x * weight + partner * (1.0 - weight))

        # Plain one-hot targets: smoothing is train.label_smoothing's, applied in the loss.
        target = torch.zeros((b, self.num_classes), device=dev)
        target.scatter_(1, y.view(-1, 1), 1.0)
        lam = lam.view(-1, 1)
        return mixed, target * lam + target.flip(0) * (1.0 - lam)


def build_mix(cfg: MixConfig | None, num_classes: int) -> Mix | None:
    """The mixer for the (validated) `data.mix` section, or None when mixing is off (no section,
    both alphas 0, or prob 0)."""
    if cfg is None or cfg.mixup_alpha == 0 and cfg.cutmix_alpha == 0 or cfg.prob == 0:
        return None
    return Mix(cfg, num_classes)
