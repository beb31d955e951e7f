"""Small torchvision v2 transforms: the per-sample forms of the `cutout`, `random_crop` and `perspective` ops.

Kept outside `data.augment` (whose registry imports every module there) so that importing the ops (as `trainpipe check` and
`trainpipe list` do) does not import torchvision; StreamLoader imports this when it builds
its transforms.
"""

from __future__ import annotations

from typing import Any

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF


class Cutout(v2.Transform):
    """Erase a size x size square at a uniformly random centre, clipped at the border.

    torchvision has no cutout: RandomErasing draws an area fraction and an aspect ratio,
    which cannot express a fixed side length that is clipped at the image border.
    """

    def __init__(self, *, size: int, p: float = 1.0, value: float = 0.0) -> None:
        super().__init__()
        self.size, self.p, self.value = size, p, value

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = v2.query_size(flat_inputs)
        cy, cx = int(torch.randint(0, h, ())), int(torch.randint(0, w, ()))
        top, left = max(cy - self.size // 2, 0), max(cx - self.size // 2, 0)
        bottom, right = min(cy - self.size // 2 + self.size, h), min(cx - self.size // 2 + self.size, w)
        apply = bool(torch.rand(()) < self.p)
        return dict(apply=apply, i=top, j=left, h=bottom - top, w=right - left)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not params["apply"]:
            return inpt
        v = torch.tensor([self.value]).view(-1, 1, 1)
        box = {k: params[k] for k in ("i", "j", "h", "w")}
        return self._call_kernel(TF.erase, inpt, **box, v=v)


class PadRandomCrop(v2.RandomCrop):
    """v2.RandomCrop that crops back to the input's own size after padding.

    v2.RandomCrop needs the output size up front, but `random_crop` defaults to "the size
    of whatever image comes in", so the size is read from each input.
    """

    def __init__(self, *, padding: int, padding_mode: str) -> None:
        super().__init__(size=1, padding=padding or None, padding_mode=padding_mode)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        self.size = tuple(v2.query_size(flat_inputs))
        return super().make_params(flat_inputs)


class Perspective(v2.RandomPerspective):
    """v2.RandomPerspective whose pixels on the warp's horizon get the fill value instead of NaN.

    On small images (digits' 8x8, often; 12x12, now and then) some corner draws put the
    line the homography sends to infinity through a pixel centre; torchvision's grid then
    holds inf there and grid_sample returns NaN, which ends a run with a non-finite loss.
    That pixel lies outside the source image, so it gets the fill like any other.
    """

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        out = super().transform(inpt, params)
        fill = float(self.fill) if isinstance(self.fill, (int, float)) else 0.0
        return out.nan_to_num(nan=fill) if isinstance(out, torch.Tensor) else out
