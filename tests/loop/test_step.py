"""The replaceable step: a closure optimizer is one registered entry that declares step="closure"."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from engine_kit import TensorLoader, blobs, make_trainer, mlp

import trainpipe
from trainpipe.errors import ConfigError
from trainpipe.loop.step import ClosureStep, PlainStep, STEPS
from trainpipe.registry import OPTIMIZERS


class TwoPassSGD(torch.optim.SGD):
    """A closure optimizer with no attribute telling it apart: it steps with the closure's gradient."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.closure_calls = 0

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        assert closure is not None, "a closure step must pass a closure"
        self.zero_grad(set_to_none=True)
        with torch.enable_grad():
            loss = closure()
        self.closure_calls += 1
        super().step()
        return loss


@pytest.fixture
def two_pass() -> Iterator[str]:
    name = "two_pass_test"

    @OPTIMIZERS.register(name, step="closure")
    def build(param_groups: list[dict[str, Any]], /, *, momentum: float = 0.0,
              nesterov: bool = False) -> torch.optim.Optimizer:
        """Test only."""
        return TwoPassSGD(param_groups, lr=param_groups[0]["lr"], momentum=momentum, nesterov=nesterov)

    yield name
    OPTIMIZERS._entries.pop(name)


def test_every_declared_step_kind_is_a_step() -> None:
    for name in OPTIMIZERS.names():
        assert OPTIMIZERS.get(name).traits.get("step", "plain") in STEPS, name
    assert OPTIMIZERS.get("sam").traits["step"] == "closure"


def test_a_new_closure_optimizer_gets_the_closure_step_and_the_config_checks(two_pass: str) -> None:
    x, y = blobs(64)
    tr = make_trainer(mlp(), TensorLoader(x, y, 32), overrides=[f"optim.name={two_pass}", "train.grad_clip=0.5"])
    assert isinstance(tr.step, ClosureStep) and not tr.step.fp16_ok
    tr.fit()
    assert tr.optimizer.closure_calls == 2 and tr.state.step == 2
    # The same declaration refuses what a closure step cannot do.
    for bad, key in ((["train.precision=fp16"], "train.precision"), (["train.grad_accum_steps=2"],
                                                                    "train.grad_accum_steps")):
        with pytest.raises(ConfigError, match=rf"{key}: .*optim.name={two_pass}"):
            trainpipe.load_config(None, [f"optim.name={two_pass}", *bad])


def test_plain_optimizers_get_the_plain_step() -> None:
    x, y = blobs(32)
    assert isinstance(make_trainer(mlp(), TensorLoader(x, y, 32)).step, PlainStep)
