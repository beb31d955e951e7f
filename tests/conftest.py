"""Shared fixtures. Tests run on the CPU, one torch thread per pytest worker."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def pytest_report_header() -> str:
    import optuna

    return f"optuna {optuna.__version__} ({Path(optuna.__file__).parent})"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    # Never touch the user's ~/.cache from tests; share one cache per test session.
    monkeypatch.setenv("TRAINPIPE_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.setenv("CI", os.environ.get("CI", "1"))


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real datasets not available ({SHARED_DATA} is absent)")
    return SHARED_DATA


def tiny_overrides(**extra: object) -> list[str]:
    """A fast digits run for tests: few epochs, a narrow net, no plots."""
    base = {"train.epochs": 2, "model.width": 8, "tracking.plots": False}
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # `@pytest.mark.cuda` marks a test that needs a CUDA device: skipped without one, and
    # selected by bench/gpu_session.sh (`-m cuda`), which fails when none of them ran.
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)
