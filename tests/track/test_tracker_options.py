"""Trackers take their options from their own section, tracking.<name>, checked like a component's."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import trainpipe
from trainpipe.errors import ConfigError
from trainpipe.loop.callbacks import Callback
from trainpipe.registry import TRACKERS
from trainpipe.run.train import callbacks_for

BUILT: list[dict[str, Any]] = []


@pytest.fixture
def recorder() -> Iterator[str]:
    name = "recorder_test"

    @TRACKERS.register(name)
    def build(run_dir: Path, cfg: Any, /, *, uri: str = "file:./mlruns", every: int = 1) -> Callback:
        """Test only."""
        BUILT.append({"uri": uri, "every": every})
        return Callback()

    BUILT.clear()
    yield name
    TRACKERS._entries.pop(name)


def test_a_new_trackers_options_come_from_its_own_section(recorder: str, tmp_path: Path) -> None:
    cfg = trainpipe.load_config(None, [f"tracking.trackers=[{recorder}]", f"tracking.{recorder}.every=5"])
    assert cfg.to_dict()["tracking"][recorder] == {"uri": "file:./mlruns", "every": 5}  # completed
    callbacks_for(cfg, tmp_path, main=True, console=Callback())
    assert BUILT == [{"uri": "file:./mlruns", "every": 5}]
    with pytest.raises(ConfigError, match=rf"tracking\.{recorder}\.evry: unknown key .*did you mean"):
        trainpipe.load_config(None, [f"tracking.{recorder}.evry=5"])
    with pytest.raises(ConfigError, match=r"tracking\.progres: unknown key; did you mean progress\?"):
        trainpipe.load_config(None, ["tracking.progres=bar"])


def test_an_options_section_alone_turns_its_tracker_on_and_null_leaves_it_off(recorder: str) -> None:
    on = trainpipe.load_config(None, [f"tracking.{recorder}={{uri: x}}"])
    assert recorder in on.tracking.enabled()
    off = trainpipe.load_config(None, ["tracking.wandb=null"])
    assert off.tracking.enabled() == ["jsonl", "plots"] and "wandb" not in off.to_dict()["tracking"]
