"""Muon for every hidden weight matrix, conv kernels included (viewed as matrices), and an
optimizer that steps several optimizers as one (Muon for matrices, AdamW for the rest)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch.optim import Optimizer


def matrix_view(t: torch.Tensor) -> torch.Tensor:
    """`t` as a 2-D (out, fan_in) view sharing its storage, whatever its memory format.

    Conv kernels (out, in, kh, kw) are flattened in the order their memory is laid
    out (channels-last kernels put `in` last). The column order does not matter to
    Muon: orthogonalisation commutes with permuting columns, and the lr adjustment
    only reads the (out, fan_in) shape.
    """
    if t.ndim == 2:
        return t
    inner = sorted(range(1, t.ndim), key=lambda d: t.stride(d), reverse=True)
    return t.permute(0, *inner).view(t.shape[0], -1)


def _matrix_like(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`t` flattened with the same column order as `matrix_view(like)` (a copy if needed)."""
    if t.ndim == 2:
        return t
    inner = sorted(range(1, like.ndim), key=lambda d: like.stride(d), reverse=True)
    return t.permute(0, *inner).reshape(t.shape[0], -1)


# torch.optim.Muon arrived in torch 2.9; with an older torch the class exists but `muon` refuses to build it.
_MuonBase: type[Optimizer] = getattr(torch.optim, "Muon", Optimizer)


class KernelMuon(_MuonBase):  # type: ignore[misc,valid-type]
    """torch.optim.Muon that also accepts conv kernels, each treated as an (out, fan_in) matrix.

    torch's Muon refuses any tensor that is not 2-D when it is built, although its
    update only needs a matrix view. We reuse its step unchanged and hand it 2-D
    views of the kernels (their in-place update lands in the kernel's storage);
    the momentum buffer is kept in that 2-D shape.
    """

    def __init__(self, params: Iterable[Any], **options: Any) -> None:
        # torch's Muon validates the options; a stand-in matrix gets past its 2-D check.
        defaults = torch.optim.Muon([torch.zeros(1, 1)], **options).defaults
        Optimizer.__init__(self, params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim < 2:
                    raise ValueError(f"Muon needs matrices or conv kernels, got a tensor of shape {tuple(p.shape)}")

    def _init_group(
        self,
        group: dict[str, Any],
        params_with_grad: list[torch.Tensor],
        grads: list[torch.Tensor],
        muon_momentum_bufs: list[torch.Tensor],
    ) -> bool:
        for p in group["params"]:
            if p.grad is None:
                continue
            if torch.is_complex(p) or p.grad.is_sparse:
                raise RuntimeError("Muon supports only dense real parameters")
            m = matrix_view(p)
            params_with_grad.append(m)
            grads.append(_matrix_like(p.grad, p))
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(m, memory_format=torch.contiguous_format)
            muon_momentum_bufs.append(state["momentum_buffer"])
        return False  # no complex parameters


class OptimizerSet(Optimizer):
    """Several optimizers over disjoint parameters, driven as one (e.g. Muon + AdamW).

    `param_groups` is the concatenation of the parts' group dicts (the same dicts,
    so a schedule reaches every part); `state_dict()` holds each part's state.
    """

    def __init__(self, parts: Sequence[Optimizer]) -> None:
        if not parts:
            raise ValueError("OptimizerSet needs at least one optimizer")
        self.parts = list(parts)
        super().__init__([g for o in self.parts for g in o.param_groups], {})

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for o in self.parts:
            o.step()
        return loss

    def state_dict(self) -> dict[str, Any]:
        return {"parts": [o.state_dict() for o in self.parts]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict["parts"]
        if len(saved) != len(self.parts):
            raise ValueError(f"optimizer state holds {len(saved)} parts, this optimizer has {len(self.parts)}")
        for o, s in zip(self.parts, saved):
            o.load_state_dict(s)
        self.param_groups = [g for o in self.parts for g in o.param_groups]
