"""The report's figures, drawn with matplotlib's Agg backend and returned as PNG bytes.

Every figure is a bare `Figure` (it renders with Agg): pyplot's global state and its
backend stay as the user has them (a notebook's inline backend, a GUI window).
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from typing import Any

import matplotlib
import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

DPI = 110


class Rendered(bytes):
    """A figure's PNG bytes that keep their figure, so that it can also be saved as SVG or PDF."""

    figure: Any = None


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    out = Rendered(buf.getvalue())
    out.figure = fig
    return out


def save_vector(png: bytes, stem: Any) -> list[str]:
    """Save the figure behind `png` (from this module) as `stem`.svg and `stem`.pdf; the names written.
    A figure matplotlib cannot write as PDF (a missing font) keeps its SVG."""
    fig = getattr(png, "figure", None)
    if fig is None:
        return []
    written = []
    for fmt in ("svg", "pdf"):
        path = stem.with_suffix(f".{fmt}")
        try:
            fig.savefig(path, format=fmt, bbox_inches="tight")
        except Exception as e:  # a backend or font problem: the PNG in the report is still there
            print(f"{path.name} not written: {type(e).__name__}: {e}")
            continue
        written.append(path.name)
    return written


def _subplots(*grid: int, figsize: tuple[float, float], **kw: Any) -> tuple[Figure, Any]:
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*grid, **kw)


def _series(history: Sequence[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for row in history:
        v = row.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            xs.append(float(row.get("epoch", len(xs) + 1)))
            ys.append(float(v))
    return xs, ys


def curves(histories: dict[str, Sequence[dict[str, Any]]], *, best_epochs: dict[str, int | None] | None = None) -> bytes:
    """Loss, accuracy and learning rate per epoch; one colour per run, train dashed, val solid."""
    fig, axes = _subplots(1, 3, figsize=(15, 4.2))
    colours = matplotlib.colormaps.get_cmap("tab10" if len(histories) <= 10 else "viridis")
    single = len(histories) == 1
    for i, (label, hist) in enumerate(histories.items()):
        c = colours(i if len(histories) <= 10 else i / max(len(histories) - 1, 1))
        for ax, metric in zip(axes[:2], ("loss", "acc")):
            for split, style in (("train", "--"), ("val", "-")):
                xs, ys = _series(hist, f"{split}/{metric}")
                if xs:
                    name = split if single else f"{label} ({split})"
                    ax.plot(xs, ys, style, color=c if not single else None, label=name, marker="." if len(xs) < 30 else None)
        xs, ys = _series(hist, "lr")
        if xs:
            axes[2].plot(xs, ys, color=c, label=None if single else label)
        best = (best_epochs or {}).get(label)
        if best and single:
            axes[1].axvline(best, color="grey", linestyle=":", linewidth=1, label=f"best epoch ({best})")
    for ax, title in zip(axes, ("loss", "accuracy", "learning rate (end of epoch)")):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0] and (single or ax is not axes[2]):
            ax.legend(fontsize=8)
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    return _png(fig)


def overlay(histories: dict[str, Sequence[dict[str, Any]]], key: str, *, highlight: str | None = None,
            values: dict[str, float | None] | None = None) -> bytes:
    """One metric of many runs (sweep trials) on one axis, coloured by their final value."""
    fig, ax = _subplots(figsize=(10, 5))
    vals = [v for v in (values or {}).values() if v is not None]
    lo, hi = (min(vals), max(vals)) if vals else (0.0, 1.0)
    cmap = matplotlib.colormaps.get_cmap("viridis")
    for label, hist in histories.items():
        xs, ys = _series(hist, key)
        if not xs:
            continue
        v = (values or {}).get(label)
        colour = cmap((v - lo) / (hi - lo) if v is not None and hi > lo else 0.5)
        best = label == highlight
        # Markers as well as lines: a trial of one epoch is a single point, which a line alone does not draw.
        ax.plot(xs, ys, color="crimson" if best else colour, linewidth=2.5 if best else 1.0,
                marker="o" if len(xs) < 30 else None, markersize=5 if best else 3,
                alpha=1.0 if best else 0.75, zorder=3 if best else 2, label=f"best: {label}" if best else None)
    if vals and hi > lo:
        sm = ScalarMappable(cmap=cmap, norm=Normalize(lo, hi))
        fig.colorbar(sm, ax=ax, label=f"best {key}")
    ax.set_xlabel("epoch")
    ax.set_ylabel(key)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if highlight is not None:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


CONFIG_PANELS = (("train/loss", "train loss"), ("val/loss", "val loss"), ("lr", "learning rate (end of epoch)"),
                 ("train/acc", "train accuracy"), ("val/acc", "val accuracy"))


def _mean_series(histories: Sequence[Sequence[dict[str, Any]]], key: str) -> tuple[list[float], list[float], list[float]]:
    """Per epoch: the mean over runs and the standard deviation (0 for a single run)."""
    by_epoch: dict[float, list[float]] = {}
    for hist in histories:
        for x, y in zip(*_series(hist, key)):
            by_epoch.setdefault(x, []).append(y)
    xs = sorted(by_epoch)
    means = [float(np.mean(by_epoch[x])) for x in xs]
    sds = [float(np.std(by_epoch[x], ddof=1)) if len(by_epoch[x]) > 1 else 0.0 for x in xs]
    return xs, means, sds


def config_curves(groups: dict[str, Sequence[Sequence[dict[str, Any]]]], *, highlight: str | None = None) -> bytes:
    """Train/val loss and accuracy and the lr per epoch, one line per configuration (the mean over
    its runs, with a ± one standard deviation band when it has several), the highlighted one thick."""
    fig, axes = _subplots(2, 3, figsize=(15, 8))
    flat = list(axes.flat)
    n = len(groups)
    cmap = matplotlib.colormaps.get_cmap("tab10" if n <= 10 else "viridis")
    for i, (label, hists) in enumerate(groups.items()):
        c = cmap(i if n <= 10 else i / max(n - 1, 1))
        thick = label == highlight
        for ax, (key, _) in zip(flat, CONFIG_PANELS):
            xs, ys, sd = _mean_series(hists, key)
            if not xs:
                continue
            ax.plot(xs, ys, color=c, linewidth=2.6 if thick else 1.2, marker="o" if len(xs) < 30 else None,
                    markersize=4 if thick else 3, zorder=3 if thick else 2, label=label)
            if any(sd):
                lo, hi = np.array(ys) - np.array(sd), np.array(ys) + np.array(sd)
                ax.fill_between(xs, lo, hi, color=c, alpha=0.15, linewidth=0)
    for ax, (_, title) in zip(flat, CONFIG_PANELS):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    legend = flat[-1]
    legend.axis("off")
    handles, labels = flat[0].get_legend_handles_labels()
    if not handles:
        handles, labels = next((a.get_legend_handles_labels() for a in flat if a.get_legend_handles_labels()[0]),
                               ([], []))
    if handles:
        legend.legend(handles[:20], labels[:20], loc="upper left", fontsize=8, frameon=False,
                      title="configuration" + (" (first 20)" if len(handles) > 20 else ""))
    fig.tight_layout()
    return _png(fig)


def per_class(acc: Sequence[float], classes: Sequence[str]) -> bytes:
    """Per-class accuracy as bars, sorted from worst to best."""
    order = np.argsort(acc)
    n = len(acc)
    fig, ax = _subplots(figsize=(min(4 + 0.18 * n, 20), 4))
    ax.bar(range(n), [acc[i] for i in order], color="steelblue")
    if n <= 60:
        ax.set_xticks(range(n), [str(classes[i]) for i in order], rotation=90, fontsize=7)
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def label(v: Any, width: int = 28) -> str:
    """A parameter value as a short axis label (augmentation lists become compact JSON)."""
    if isinstance(v, list) and all(isinstance(i, str) or (isinstance(i, dict) and "name" in i) for i in v):
        text = "+".join(i if isinstance(i, str) else str(i["name"]) for i in v) or "[]"  # augmentation ops
    else:
        text = json.dumps(v, separators=(",", ":")) if isinstance(v, (list, dict)) else str(v)
    return text if len(text) <= width else text[: width - 1] + "…"


def _is_numeric(values: Sequence[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values if v is not None)


def _log_scale(values: Sequence[float]) -> bool:
    pos = [v for v in values if v is not None]
    return bool(pos) and min(pos) > 0 and max(pos) / min(pos) >= 20


def metric_vs_params(rows: list[dict[str, Any]], params: list[str], metric: str) -> bytes:
    """One panel per varied parameter: the metric of each trial against its value."""
    cols = min(len(params), 3)
    nrows = math.ceil(len(params) / cols)
    fig, axes = _subplots(nrows, cols, figsize=(5 * cols, 3.8 * nrows), squeeze=False)
    for ax, p in zip(axes.flat, params):
        pts = [(r.get(p), r.get(metric)) for r in rows if r.get(metric) is not None and r.get(p) is not None]
        xs = [x for x, _ in pts]
        ys = [y for _, y in pts]
        if _is_numeric(xs):
            ax.scatter(xs, ys, alpha=0.8)
            if _log_scale(xs):
                ax.set_xscale("log")
            if len(set(xs)) <= 8:  # a grid: label the values tried, not round numbers between them
                ax.set_xticks(sorted(set(xs)), [f"{v:.3g}" for v in sorted(set(xs))])
                ax.minorticks_off()
        else:
            cats = sorted({label(x) for x in xs})
            pos = {c: i for i, c in enumerate(cats)}
            jitter = np.random.default_rng(0).uniform(-0.08, 0.08, len(xs))
            ax.scatter([pos[label(x)] + j for x, j in zip(xs, jitter)], ys, alpha=0.8)
            ax.set_xticks(range(len(cats)), cats, rotation=20 if len(cats) > 3 else 0)
            for c in cats:
                ys_c = [y for x, y in pts if label(x) == c]
                ax.hlines(np.mean(ys_c), pos[c] - 0.25, pos[c] + 0.25, color="crimson")
        ax.set_title(p)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(params):]:
        ax.axis("off")
    fig.tight_layout()
    return _png(fig)


def parallel_coordinates(rows: list[dict[str, Any]], params: list[str], metric: str, *, goal: str = "maximize") -> bytes:
    """Each trial a line through one axis per parameter and the metric, coloured by the metric.

    Drawn here rather than with pandas or Optuna's plot: axes mix categorical values
    with log-scaled numbers, and the data come from results, not from a live study.
    """
    rows = [r for r in rows if r.get(metric) is not None]
    axes_keys = params + [metric]
    scaled: dict[str, list[float]] = {}
    ticks: dict[str, tuple[list[float], list[str]]] = {}
    for k in axes_keys:
        vals = [r.get(k) for r in rows]
        if _is_numeric(vals) and any(v is not None for v in vals):
            nums = [float(v) for v in vals if v is not None]
            log = _log_scale(nums)
            tf = (lambda v: math.log10(v)) if log else (lambda v: v)
            lo, hi = tf(min(nums)), tf(max(nums))
            span = hi - lo or 1.0
            scaled[k] = [(tf(float(v)) - lo) / span if v is not None else float("nan") for v in vals]
            if len(set(nums)) <= 6:
                tick_vals = sorted(set(nums))
            elif log:
                tick_vals = [10 ** x for x in np.linspace(lo, hi, 5)]
            else:
                tick_vals = list(np.linspace(lo, hi, 5))
            ticks[k] = ([(tf(v) - lo) / span if hi > lo else 0.0 for v in tick_vals], [f"{v:.3g}" for v in tick_vals])
        else:
            cats = sorted({label(v) for v in vals})
            pos = {c: (i / (len(cats) - 1) if len(cats) > 1 else 0.5) for i, c in enumerate(cats)}
            scaled[k] = [pos[label(v)] for v in vals]
            ticks[k] = (list(pos.values()), cats)
    fig, ax = _subplots(figsize=(max(7, 2.3 * len(axes_keys)), 5))
    metric_vals = [float(r[metric]) for r in rows]
    lo, hi = (min(metric_vals), max(metric_vals)) if metric_vals else (0.0, 1.0)
    cmap = matplotlib.colormaps.get_cmap("viridis")
    order = np.argsort(metric_vals) if goal == "maximize" else np.argsort(metric_vals)[::-1]
    for i in order:  # best trials drawn last, on top
        ys = [scaled[k][i] for k in axes_keys]
        c = cmap((metric_vals[i] - lo) / (hi - lo) if hi > lo else 0.5)
        ax.plot(range(len(axes_keys)), ys, color=c, alpha=0.85, linewidth=1.4)
    for j, k in enumerate(axes_keys):
        ax.axvline(j, color="black", linewidth=0.8)
        for y, lab in zip(*ticks[k]):
            ax.text(j + 0.03, y, lab, fontsize=7, va="center")
    ax.set_xticks(range(len(axes_keys)), axes_keys, rotation=15)
    ax.set_yticks([])
    ax.set_xlim(-0.1, len(axes_keys) - 1 + 0.5)
    ax.set_ylim(-0.05, 1.05)
    if hi > lo:
        sm = ScalarMappable(cmap=cmap, norm=Normalize(lo, hi))
        fig.colorbar(sm, ax=ax, label=metric)
    fig.tight_layout()
    return _png(fig)


def importance(values: dict[str, float]) -> bytes:
    """Horizontal bars of parameter importance (Optuna), largest on top."""
    items = sorted(values.items(), key=lambda kv: kv[1])
    fig, ax = _subplots(figsize=(7, 0.5 * len(items) + 1.2))
    ax.barh([k for k, _ in items], [v for _, v in items], color="steelblue")
    ax.set_xlabel("importance (share of the metric's variance)")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return _png(fig)
