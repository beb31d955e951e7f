"""Helpers shared by the sweep tests: tiny digits trials and sweep files written to disk."""

from __future__ import annotations

import csv
from pathlib import Path

import yaml

ONE_EPOCH = {"train.epochs": 1, "model.width": 8, "tracking.plots": False, "data.val_split": 0.2}
TINY = {"train.epochs": 2, "model.width": 8, "tracking.plots": False, "data.val_split": 0.2}


def sweep_file(tmp_path: Path, parameters: dict, **extra: object) -> Path:
    data = {"method": "grid", "metric": {"name": "val/acc", "goal": "maximize"}, "parameters": parameters,
            "fixed": TINY, **extra}
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    return p


def read_csv(path: Path) -> list[dict[str, str]]:
    """results.csv (or any CSV with a header) as one dict per row."""
    with path.open() as f:
        return list(csv.DictReader(f))
