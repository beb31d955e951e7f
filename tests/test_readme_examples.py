"""The README is the user's manual: its YAML examples and example files must validate."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from trainpipe.config import load
from trainpipe.sweep.check import check_against_config
from trainpipe.sweep.spec import load_spec, parse_spec

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
BLOCKS = [b for b in re.findall(r"```yaml\n(.*?)```", README, flags=re.S)]


def _is_sweep(data: dict) -> bool:
    return "method" in data or "parameters" in data


@pytest.mark.parametrize("block", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_yaml_blocks_validate(block: str) -> None:
    data = yaml.safe_load(block)
    assert isinstance(data, dict)
    if _is_sweep(data):
        data.setdefault("base", "quickstart")
        check_against_config(parse_spec(data, source=REPO / "examples" / "readme.yaml"))
    else:
        load(None, {k: v for k, v in _flatten(data).items()})


def _flatten(d: dict, prefix: str = "") -> dict:
    """Top-level sections as dotted overrides on the quickstart (a fragment may omit sections)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and key in ("data", "model", "optim", "sched", "train", "tracking"):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


@pytest.mark.parametrize("path", sorted((REPO / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_example_files_validate(path: Path) -> None:
    data = yaml.safe_load(path.read_text())
    if _is_sweep(data):
        check_against_config(load_spec(path))
    else:
        load(path)
