"""The README is the user's manual: its YAML examples and example files must validate."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from config_kit import assert_keeps
from trainpipe.config import load
from trainpipe.sweep.check import check_against_config
from trainpipe.sweep.spec import SweepSpec, load_spec, parse_spec

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
BLOCKS = [b for b in re.findall(r"```yaml\n(.*?)```", README, flags=re.S)]


def _is_sweep(data: dict) -> bool:
    return "method" in data or "parameters" in data


@pytest.mark.parametrize("block", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_yaml_blocks_validate_and_mean_what_they_say(block: str) -> None:
    data = yaml.safe_load(block)
    assert isinstance(data, dict)
    if _is_sweep(data):
        data.setdefault("base", "quickstart")
        _check_sweep(data, parse_spec(data, source=REPO / "examples" / "readme.yaml"), "README block")
    else:
        overrides = _flatten(data)
        assert_keeps(overrides, load(None, overrides).to_dict(), where=f"README block {block[:40]!r}")


def _check_sweep(data: dict, spec: SweepSpec, where: str) -> None:
    """The sweep resolves, varies exactly the parameters the file lists, and every trial's
    config holds the file's fixed values."""
    base_cfg = check_against_config(spec)
    assert spec.method == data["method"]
    assert {p.display for p in spec.params} == set(_param_names(data["parameters"])), where
    assert_keeps(data.get("fixed") or {}, base_cfg.to_dict(), where=f"{where}: fixed")
    if "metric" in data:
        assert spec.metric_label == data["metric"]["name"] and spec.goal == data["metric"].get("goal", spec.goal)


def _param_names(params: dict, prefix: str = "") -> list[str]:
    """The names a sweep file gives its parameters, W&B's nested `parameters:` blocks joined with dots."""
    out = []
    for k, v in params.items():
        if isinstance(v, dict) and "parameters" in v:
            out.extend(_param_names(v["parameters"], f"{prefix}{k}."))
        else:
            out.append(f"{prefix}{k}")
    return out


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
def test_example_files_validate_and_mean_what_they_say(path: Path) -> None:
    data = yaml.safe_load(path.read_text())
    if _is_sweep(data):
        _check_sweep(data, load_spec(path), path.name)
    else:
        assert_keeps(data, load(path).to_dict(), where=path.name)
