"""Helpers shared by the sweep tests: tiny digits trials and sweep files written to disk."""

from __future__ import annotations

from pathlib import Path

import yaml

TINY = {"train.epochs": 2, "model.width": 8, "tracking.plots": False, "data.val_split": 0.2}


def sweep_file(tmp_path: Path, parameters: dict, **extra: object) -> Path:
    data = {"method": "grid", "metric": {"name": "val/acc", "goal": "maximize"}, "parameters": parameters,
            "fixed": TINY, **extra}
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    return p
