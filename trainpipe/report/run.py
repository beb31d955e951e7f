"""Reports for one run (summary, config changes, curves, per-class test results) and for
several runs side by side (what differs, what each reached, overlaid curves)."""

from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np
import yaml

from trainpipe.report import plots
from trainpipe.run import rundir
from trainpipe.report.html import Doc
from trainpipe.report.load import (
    MISSING,
    Run,
    differing_keys,
    differs_from_defaults,
    flatten,
    fmt_metric,
    fmt_value,
    mean_spread,
)

# Rows of the summary table, in reading order; keys absent from a run are left out.
SUMMARY_KEYS = (
    "status", "stop_reason", "epochs_run", "best_epoch", "test/acc", "test/top5", "test/loss",
    "final/train/acc", "final/train/loss", "params", "trainable_params", "macs_per_image",
    "train_size", "val_size", "test_size", "loader", "device", "epoch_time_s", "wall_time_s", "error",
)
# At most this many classes get a row each in the per-class table; beyond, the worst and best.
FULL_TABLE_CLASSES = 20


def command_of(run: Run) -> str | None:
    """The command that started the run (history.jsonl's first train event)."""
    for event in rundir.read_history(run.path):
        if event.get("event") == "train" and event.get("command"):
            return str(event["command"])
    return None


def result_columns(runs: list[Run]) -> list[str]:
    """The metrics worth comparing: the monitored best, then test metrics the runs have."""
    keys = []
    for r in runs:
        k = f"best/{r.monitor}"
        if k not in keys:
            keys.append(k)
    for k in ("test/acc", "test/top5", "test/loss", "final/train/acc", "best_epoch", "epochs_run",
              "epoch_time_s", "wall_time_s"):
        if any(k in r.summary for r in runs):
            keys.append(k)
    return keys


# ---------------------------------------------------------------------- one run
def run_report(run: Run, output: Path, *, evaluate: bool = True) -> Path:
    output.mkdir(parents=True, exist_ok=True)
    s = run.summary
    cfg = run.config
    doc = Doc(f"Run report: {run.label}")
    data, model = cfg.get("data", {}), cfg.get("model", {})
    arch = model.get("arch")
    doc.para(
        f"**{s.get('status', 'unknown')}** ({s.get('stop_reason') or 'no stop reason'}): "
        f"`{model.get('name', '?')}`{f' ({arch})' if arch else ''} on `{data.get('dataset', '?')}`, "
        f"{s.get('epochs_run', len(run.history))} of {cfg.get('train', {}).get('epochs', '?')} epochs, "
        f"best {run.monitor} {fmt_metric(run.monitor, run.best)} at epoch {s.get('best_epoch', MISSING)}, "
        f"test accuracy {fmt_metric('test/acc', s.get('test/acc'))}."
    )
    doc.para(f"Run directory: `{run.path}`")
    if s.get("status") == "interrupted":
        doc.para(f"This run was {rundir.describe_status(run.path, s)}.")
    cmd = command_of(run)
    if cmd:
        doc.para(f"Command: `{cmd}`")

    doc.heading("Summary")
    rows = [[k, fmt_metric(k, s[k]) if not isinstance(s[k], str) else s[k]]
            for k in (f"best/{run.monitor}",) + SUMMARY_KEYS if k in s]
    if run.history:
        ips = [h["images_per_s"] for h in run.history if isinstance(h.get("images_per_s"), (int, float))]
        if ips:
            rows.append(["images/s (train, mean)", f"{statistics.fmean(ips):,.0f}"])
    doc.table(["", "value"], rows)

    doc.heading("Config: what differs from the defaults")
    diff = differs_from_defaults(cfg)
    if diff:
        doc.table(["key", "value", "default"], [[f"`{k}`", fmt_value(v), fmt_value(d)] for k, v, d in diff])
        doc.note("Defaults are those of the same dataset, model, optimizer and scheduler; the full config is in the appendix.")
    else:
        doc.para("The run used the defaults throughout (see the appendix).")

    doc.heading("Curves")
    if run.history:
        doc.image("curves.png", plots.curves({run.label: run.history}, best_epochs={run.label: s.get("best_epoch")}),
                  "Loss and accuracy per epoch (train dashed, val solid) and the learning rate.")
    else:
        doc.note("No epochs recorded in metrics.jsonl yet.")

    doc.heading("Test set")
    test_section(doc, run, output, evaluate=evaluate)

    doc.heading("Appendix: full config")
    doc.code(yaml.safe_dump(cfg, sort_keys=False) if cfg else "(config.yaml missing)", "yaml")
    return doc.write(output)


def test_section(doc: Doc, run: Run, output: Path, *, evaluate: bool) -> None:
    s = run.summary
    if "test/acc" in s:
        doc.para(f"Test accuracy of the best checkpoint (epoch {s.get('best_epoch', MISSING)}), measured at the end "
                 f"of training: **{fmt_metric('test/acc', s['test/acc'])}**"
                 + (f", top-5 {fmt_metric('test/top5', s['test/top5'])}" if "test/top5" in s else "") + ".")
    if not evaluate:
        doc.note("Per-class results skipped (report written with --no-eval).")
        return
    from trainpipe.run.evaluate import evaluate_checkpoint

    # Flip TTA as the run used it, so that the accuracy matches the one training recorded.
    tta = run.config.get("train", {}).get("tta") == "flip"
    try:
        r = evaluate_checkpoint(run.path, split="test", tta=tta, device="auto")
    except Exception as e:  # missing data files, a deleted checkpoint, no test split: say so, keep the report
        doc.note(f"Per-class results unavailable: {type(e).__name__}: {' '.join(str(e).split())}")
        return
    cm, classes = r.confusion, r.classes
    n = len(classes)
    np.savetxt(output / "confusion_matrix.csv", cm, fmt="%d", delimiter=",", header=",".join(classes), comments="")
    doc.para(f"Re-evaluated now ({r.checkpoint.name}) on {int(cm.sum()):,} test samples: accuracy "
             f"**{fmt_metric('test/acc', r.metrics['test/acc'])}**. Confusion matrix counts: `confusion_matrix.csv`.")
    support = cm.sum(axis=1)
    acc = np.array([r.per_class[c] for c in classes], dtype=float)
    table = [[classes[i], int(support[i]), int(cm[i, i]), fmt_metric("acc", acc[i])] for i in range(n)]
    if n <= FULL_TABLE_CLASSES:
        doc.table(["class", "samples", "correct", "accuracy"], table)
    else:
        order = [i for i in np.argsort(acc) if not np.isnan(acc[i])]
        doc.para("Worst ten classes:")
        doc.table(["class", "samples", "correct", "accuracy"], [table[i] for i in order[:10]])
        doc.para("Best ten classes:")
        doc.table(["class", "samples", "correct", "accuracy"], [table[i] for i in order[::-1][:10]])
        doc.image("per_class.png", plots.per_class(list(np.nan_to_num(acc)), classes), "Per-class test accuracy, worst to best.")
    confused = most_confused(cm, classes)
    if confused:
        doc.para("Most frequent mistakes: " + "; ".join(f"{t} → {p} ({c})" for t, p, c in confused) + ".")
    doc.image("confusion.png", r.image_path.read_bytes(), "Confusion matrix (rows: true class, columns: predicted).")


def most_confused(cm: np.ndarray, classes: list[str], k: int = 5) -> list[tuple[str, str, int]]:
    """The k (true, predicted, count) pairs with the most mistakes."""
    off = cm.copy()
    np.fill_diagonal(off, 0)
    pairs = [np.unravel_index(i, off.shape) for i in np.argsort(off, axis=None)[::-1][:k]]
    return [(classes[i], classes[j], int(off[i, j])) for i, j in pairs if off[i, j] > 0]


# ---------------------------------------------------------------- several runs
def compare_report(runs: list[Run], output: Path) -> Path:
    doc = Doc(f"Comparison of {len(runs)} runs")
    keys = differing_keys([r.config for r in runs])
    flats = [flatten(r.config) for r in runs]
    results = result_columns(runs)
    doc.para("Runs: " + ", ".join(f"`{r.label}` ({r.path})" for r in runs))

    doc.heading("What differs and what each reached")
    if not keys:
        doc.note("The configs are identical (apart from their names).")
    header_rows = [[f"`{k}`"] + [fmt_value(f.get(k, MISSING)) for f in flats] for k in keys]
    result_rows = [[k] + [fmt_metric(k, r.summary.get(k)) for r in runs] for k in results]
    status_row = [["status"] + [str(r.summary.get("status", "?")) for r in runs]]
    if len(runs) <= 6:
        doc.table([""] + [f"`{r.label}`" for r in runs], header_rows + status_row + result_rows)
    else:  # many runs: one row each, so the table grows down rather than sideways
        cols = [f"`{k}`" for k in keys] + ["status"] + results
        rows = [[f"`{r.label}`"] + [fmt_value(f.get(k, MISSING)) for k in keys] + [str(r.summary.get("status", "?"))]
                + [fmt_metric(k, r.summary.get(k)) for k in results] for r, f in zip(runs, flats)]
        doc.table(["run"] + cols, rows)

    groups = seed_groups(runs, keys)
    if any(len(g) > 1 for _, g in groups):
        doc.heading("Mean over seeds")
        varied = [k for k in keys if k != "seed"]
        metric_keys = [k for k in results if k.startswith(("best/", "test/")) or k == "final/train/acc"]
        rows = []
        for label, members in groups:
            rows.append([label or "(all)", str(len(members))] + [mean_spread(k, [m.summary.get(k) for m in members])
                                                                for k in metric_keys])
        doc.table([", ".join(f"`{k}`" for k in varied) or "config", "runs"] + metric_keys, rows)
        doc.note("mean ± sample standard deviation over the runs that differ only in `seed`.")

    doc.heading("Curves")
    if any(r.history for r in runs):
        doc.image("curves.png", plots.curves({r.label: r.history for r in runs}),
                  "Loss and accuracy per epoch (train dashed, val solid), and the learning rate, one colour per run.")
    else:
        doc.note("No epochs recorded in the runs' metrics.jsonl.")
    return doc.write(output)


def seed_groups(runs: list[Run], keys: list[str]) -> list[tuple[str, list[Run]]]:
    """Runs grouped by their differing keys other than the seed."""
    varied = [k for k in keys if k != "seed"]
    groups: dict[str, list[Run]] = {}
    for r in runs:
        f = flatten(r.config)
        label = ", ".join(fmt_value(f.get(k, MISSING)) for k in varied)
        groups.setdefault(label, []).append(r)
    return list(groups.items())
