"""`trainpipe report`: one run, several runs, a sweep directory; the HTML renders in Chromium."""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml

import trainpipe
from trainpipe.cli import main
from trainpipe.errors import ConfigError
from trainpipe.report import report
from trainpipe.report.html import Doc
from trainpipe.report.load import differs_from_defaults

from conftest import tiny_overrides

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, trainpipe.RunResult]:
    """Three digits runs: a and b differ only in the seed, c in the learning rate."""
    root = tmp_path_factory.mktemp("runs")
    specs = {"a": {}, "b": {"seed": 1}, "c": {"optim.lr": 0.02}}
    return {k: trainpipe.train(None, tiny_overrides(**v), output=root / k, quiet=True) for k, v in specs.items()}


def pct(v: float) -> str:
    return f"{100 * v:.2f}%"


def section(md: str, title: str) -> str:
    """The text of one `## title` section of a report."""
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", md, flags=re.S | re.M)
    assert m, f"no section {title!r} in:\n{md}"
    return m.group(1)


def assert_self_contained(html: str, n_images: int) -> None:
    assert html.count("data:image/png;base64,") == n_images
    assert "report_files/" not in html  # nothing outside the file is referenced


# ------------------------------------------------------------------------ one run
def test_one_run_report(runs: dict[str, trainpipe.RunResult]) -> None:
    run = runs["a"]
    md_path = report([run.run_dir])
    assert md_path == run.run_dir / "report.md"  # default: inside the run directory
    md = md_path.read_text()
    s = run.summary
    summary = section(md, "Summary")
    assert f"| test/acc | {pct(s['test/acc'])} |" in summary
    assert f"| best/val/acc | {pct(s['best/val/acc'])} |" in summary
    assert "| epochs_run | 2 |" in summary

    config = section(md, "Config: what differs from the defaults")
    assert "| `train.epochs` | 2 | 20 |" in config
    assert "| `model.width` | 8 | 32 |" in config
    assert "`optim.lr`" not in config  # the quickstart's lr is the default
    assert "`seed`" not in config

    test = section(md, "Test set")
    # The best checkpoint, evaluated again, gives the accuracy training recorded.
    assert f"accuracy **{pct(s['test/acc'])}**" in test
    rows = re.findall(r"^\| (\d) \| (\d+) \| (\d+) \| ([\d.]+)% \|$", test, flags=re.M)
    assert [r[0] for r in rows] == [str(i) for i in range(10)]
    assert sum(int(r[1]) for r in rows) == s["test_size"]
    assert sum(int(r[2]) for r in rows) / s["test_size"] == pytest.approx(s["test/acc"])
    cm = np.loadtxt(run.run_dir / "confusion_matrix.csv", delimiter=",", skiprows=1)
    assert cm.shape == (10, 10) and cm.sum() == s["test_size"]
    assert [int(cm[i, i]) for i in range(10)] == [int(r[2]) for r in rows]

    appendix = section(md, "Appendix: full config")
    assert yaml.safe_load(appendix.split("```yaml\n")[1].split("```")[0]) == yaml.safe_load(
        (run.run_dir / "config.yaml").read_text())
    for name in ("curves.png", "confusion.png"):
        assert (run.run_dir / "report_files" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert_self_contained((run.run_dir / "report.html").read_text(), 2)


def test_report_without_evaluation_and_without_data(runs: dict[str, trainpipe.RunResult], tmp_path: Path) -> None:
    md = report([runs["a"].run_dir], tmp_path / "noeval", evaluate=False).read_text()
    assert "skipped (report written with --no-eval)" in md and "confusion" not in md
    # A run copied away from its checkpoint still gets a report, saying what is missing.
    copy = tmp_path / "copied"
    shutil.copytree(runs["a"].run_dir, copy, ignore=shutil.ignore_patterns("checkpoints", "report*"))
    md = report([copy]).read_text()
    assert "Per-class results unavailable" in md and "best.pt" in md
    assert pct(runs["a"].summary["test/acc"]) in section(md, "Test set")


def test_report_quiet_prints_nothing_and_shows_inline_with_scoped_styles(
        runs: dict[str, trainpipe.RunResult], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(runs["a"].run_dir), "--no-eval", "--quiet", "--output", str(tmp_path / "q")]) == 0
    assert capsys.readouterr().out == ""
    shown = trainpipe.report(runs["a"].run_dir, tmp_path / "inline", evaluate=False)  # one directory, no list
    assert shown == tmp_path / "inline" / "report.md"
    inline = shown._repr_html_()  # what a notebook shows for it: the report, not its path
    assert "<html" not in inline and "<body" not in inline and inline.count("data:image/png;base64,") == 1
    css = inline.split("<style>")[1].split("</style>")[0]
    selectors = [rule.split("{")[0] for rule in css.split("}") if "{" in rule]
    # Every rule applies inside the report's element only: a notebook page keeps its own look.
    assert selectors and all(all(part.strip().startswith(".trainpipe-report") for part in sel.split(","))
                             for sel in selectors)
    assert 'class="trainpipe-report"' in inline


def test_config_diff_compares_component_options_with_that_components_defaults() -> None:
    from trainpipe.config import load

    cfg = load(base={"optim": {"name": "adamw", "lr": 0.001}, "model": {"name": "mlp", "depth": 3}}).to_dict()
    diff = {k: (v, d) for k, v, d in differs_from_defaults(cfg)}
    assert diff["optim.name"] == ("adamw", "sgd")
    assert diff["optim.lr"] == (0.001, 0.05)
    assert diff["model.depth"] == (3, 2)
    assert not any(k.startswith("optim.betas") for k in diff)  # adamw's own default


# ---------------------------------------------------------------- several runs
def test_several_runs_side_by_side(runs: dict[str, trainpipe.RunResult], tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    dirs = [runs[k].run_dir for k in "abc"]
    assert main(["report", *map(str, dirs)]) == 0
    md = (tmp_path / "report" / "report.md").read_text()  # default: ./report
    table = section(md, "What differs and what each reached")
    assert "| `optim.lr` | 0.05 | 0.05 | 0.02 |" in table
    assert "| `seed` | 0 | 1 | 0 |" in table
    assert "`train.epochs`" not in table  # the same in all three
    accs = " | ".join(pct(runs[k].summary["test/acc"]) for k in "abc")
    assert f"| test/acc | {accs} |" in table

    seeds = section(md, "Mean over seeds")
    a, b = runs["a"].summary["test/acc"], runs["b"].summary["test/acc"]
    mean, sd = np.mean([a, b]), np.std([a, b], ddof=1)
    assert "| 0.05 | 2 |" in seeds and f"{100 * mean:.2f} ± {100 * sd:.2f}%" in seeds
    assert "| 0.02 | 1 |" in seeds
    assert_self_contained((tmp_path / "report" / "report.html").read_text(), 1)


# ---------------------------------------------------------------------- sweeps
def make_sweep_dir(root: Path, runs: dict[str, trainpipe.RunResult]) -> Path:
    """A sweep directory as `trainpipe sweep` lays it out: trials/NNNN run dirs and results.csv."""
    d = root / "sweep"
    (d / "trials").mkdir(parents=True)
    (d / "sweep.yaml").write_text("method: grid\nmetric: {name: val/acc, goal: maximize}\n"
                                  "parameters:\n  optim.lr: {values: [0.02, 0.05]}\n  seed: {values: [0, 1]}\n")
    trials = {"0000": runs["c"], "0001": runs["a"], "0002": runs["b"]}
    rows = []
    for name, r in trials.items():
        shutil.copytree(r.run_dir, d / "trials" / name, ignore=shutil.ignore_patterns("report*", "confusion*"))
        s = r.summary
        rows.append([name, "completed", r.config.optim.lr, r.config.seed, s["best/val/acc"], s["final/train/acc"],
                     s["test/acc"], s["epochs_run"], s["epoch_time_s"], s["wall_time_s"], "max_epochs", "host",
                     str(d / "trials" / name)])
    rows.append(["0003", "failed", 0.02, 1, "", "", "", "", "", "", "ValueError: boom", "host", ""])
    with (d / "results.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["trial", "state", "optim.lr", "seed", "best val/acc", "train/acc", "test/acc", "epochs",
                    "s/epoch", "time_s", "reason", "host", "run_dir"])
        w.writerows(rows)
    return d


def test_sweep_report(runs: dict[str, trainpipe.RunResult], tmp_path: Path) -> None:
    d = make_sweep_dir(tmp_path, runs)
    md = report([d]).read_text()
    assert (d / "report.html").is_file()
    results = section(md, "Results")
    lines = [l for l in results.splitlines() if re.match(r"^\| \d{4} \|", l)]
    assert len(lines) == 4
    by_trial = {"0000": runs["c"], "0001": runs["a"], "0002": runs["b"]}
    vals = [by_trial[l[2:6]].summary["best/val/acc"] for l in lines[:3]]
    assert vals == sorted(vals, reverse=True)  # best first
    assert lines[-1].startswith("| 0003 | failed | 0.02 | 1 |") and "ValueError: boom" in lines[-1]
    best = lines[0][2:6]
    assert f"Best single trial: **trial {best}**" in md
    # The seed is varied: trials 0001 and 0002 (lr 0.05, seeds 0 and 1) are one configuration.
    a, b, c = (runs[k].summary["best/val/acc"] for k in "abc")
    configs = section(md, "Configurations (mean ± std over seeds)")
    first = "#1" if np.mean([a, b]) >= c else "#2"
    assert (f"| {first} | 0.05 | {100 * np.mean([a, b]):.2f} ± {100 * np.std([a, b], ddof=1):.2f}% | 2 |"
            in configs), configs
    assert f"| 0.02 | {pct(c)} | 1 |" in configs and "0000, 0003" in configs
    assert "**Test split**: evaluated at the end of every trial" in md
    for title in ("Curves of all trials", "Loss, accuracy and learning rate per configuration",
                  "Metric against each parameter", "Parallel coordinates"):
        assert "](report_files/" in section(md, title)
    # No Optuna study in this directory: importance is skipped with the reason.
    assert "Not computed: no Optuna study" in section(md, "Parameter importance")
    assert_self_contained((d / "report.html").read_text(), 4)


def test_sweep_report_without_results_csv_infers_varied_keys(runs: dict[str, trainpipe.RunResult], tmp_path: Path) -> None:
    d = make_sweep_dir(tmp_path, runs)
    (d / "results.csv").unlink()
    md = report([d]).read_text()
    assert "varied: `optim.lr`, `seed`." in md  # the parameters of sweep.yaml
    assert len(re.findall(r"^\| \d{4} \| completed \|", section(md, "Results"), flags=re.M)) == 3
    (d / "sweep.yaml").unlink()
    md = report([d]).read_text()
    assert "varied: `optim.lr`." in md  # the seed differs too, but says where a trial ran, not what was searched


@pytest.mark.slow
def report_of_sweep(tmp_path: Path, sweep_yaml: str) -> str:
    """Run the sweep file on digits and return its Markdown report."""
    from trainpipe.sweep import run_sweep

    sweep_file = tmp_path / "s.yaml"
    sweep_file.write_text(textwrap.dedent(sweep_yaml))
    run_sweep(sweep_file, tmp_path / "sw")
    return report([tmp_path / "sw"], evaluate=False).read_text()


def test_real_sweep_reports_parameter_importance(tmp_path: Path) -> None:
    md = report_of_sweep(tmp_path, """\
        method: grid
        metric: {name: val/acc, goal: maximize}
        parameters:
          optim.lr: {values: [0.003, 0.1]}
          model.width: {values: [4, 8]}
        fixed: {train.epochs: 1, tracking.plots: false}
    """)
    imp = section(md, "Parameter importance")
    values = dict(re.findall(r"^\| `([\w.]+)` \| ([\d.]+) \|$", imp, flags=re.M))
    assert set(values) == {"optim.lr", "model.width"}
    assert sum(map(float, values.values())) == pytest.approx(1.0, abs=0.01)
    assert len(re.findall(r"^\| 000\d \| completed \|", section(md, "Results"), flags=re.M)) == 4


def test_trials_of_one_epoch_are_drawn_as_points() -> None:
    import io

    from PIL import Image

    from trainpipe.report import plots

    def colourful_pixels(histories: dict) -> int:
        img = np.asarray(Image.open(io.BytesIO(plots.overlay(histories, "val/acc"))).convert("RGB")).astype(int)
        return int(((img.max(axis=2) - img.min(axis=2)) > 60).sum())  # axes, text and grid are grey

    assert colourful_pixels({"a": [], "b": []}) == 0
    assert colourful_pixels({"a": [{"epoch": 1, "val/acc": 0.5}], "b": [{"epoch": 1, "val/acc": 0.7}]}) > 20


def test_importance_over_configurations_and_only_what_varied_among_completed_trials(tmp_path: Path) -> None:
    md = report_of_sweep(tmp_path, """\
        method: grid
        metric: {name: val/acc, goal: maximize}
        parameters:
          optim.lr: {values: [0.01, 0.03, 0.1, 0.3]}
          optim.weight_decay: {values: [0.0, 1.0e+12]}   # the weights blow up to inf: those trials fail
        fixed: {train.epochs: 1, model.width: 8, tracking.plots: false, data.val_split: 0.2}
    """)
    assert len(re.findall(r"^\| \d{4} \| failed \|", section(md, "Results"), flags=re.M)) == 4
    imp = section(md, "Parameter importance")
    values = dict(re.findall(r"^\| `([\w.]+)` \| ([\d.]+) \|$", imp, flags=re.M))
    assert values == {"optim.lr": "1.000"}  # optim.weight_decay never varied among the completed trials
    assert "Left out, the same in every completed trial: `optim.weight_decay`" in imp
    assert "From 4 configurations only" in imp


# -------------------------------------------------------------------- bad input
def test_bad_paths_are_reported_as_input_errors(runs: dict[str, trainpipe.RunResult], tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(ConfigError, match="neither a run directory"):
        report([tmp_path])
    with pytest.raises(ConfigError, match="not a directory"):
        report([tmp_path / "missing"])
    d = make_sweep_dir(tmp_path, runs)
    with pytest.raises(ConfigError, match="one sweep at a time"):
        report([d, runs["a"].run_dir])
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_html_escapes_text_and_markdown_escapes_table_cells() -> None:
    doc = Doc("<b>t</b>")
    doc.para("a `x<y` and **bold** <script>")
    doc.table(["k", "v"], [["a|b", 1.5]])
    html, md = doc.html(), doc.markdown("f")
    assert "<code>x&lt;y</code>" in html and "<strong>bold</strong>" in html and "&lt;script&gt;" in html
    assert "<script>" not in html and "<title>&lt;b&gt;t&lt;/b&gt;</title>" in html
    assert "| a\\|b | 1.5 |" in md


# -------------------------------------------------------------------- rendering
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install -y chromium)")
@pytest.mark.parametrize("kind", ["run", "sweep"])
def test_html_renders_in_chromium(kind: str, runs: dict[str, trainpipe.RunResult], tmp_path: Path) -> None:
    from PIL import Image

    if kind == "run":
        html = report([runs["c"].run_dir], tmp_path / "out").with_name("report.html")
    else:
        html = report([make_sweep_dir(tmp_path, runs)]).with_name("report.html")
    shot = tmp_path / "shot.png"
    subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
         f"--screenshot={shot}", "--window-size=1200,2000", html.resolve().as_uri()],
        check=True, capture_output=True, timeout=120,
    )
    img = np.asarray(Image.open(shot).convert("RGB"))
    assert img.shape[:2] == (2000, 1200)
    # A rendered page has text and figures: many colours, and ink far down the page
    # (an unrendered or empty page is one flat colour).
    packed = (img[..., 0].astype(np.int32) << 16) | (img[..., 1].astype(np.int32) << 8) | img[..., 2]
    assert len(np.unique(packed)) > 200
    ink_rows = np.where((img < 200).any(axis=(1, 2)))[0]
    assert ink_rows.max() > 1000
    colourful = (img.max(axis=2).astype(int) - img.min(axis=2)) > 60  # the plots' coloured lines
    assert colourful.sum() > 500


# ---------------------------------------------------------------------- recipes
def test_packaged_sweep_recipe_resolves_every_trial_config() -> None:
    """The run recipes are validated by the config tests; the sweep recipe is checked here."""
    from trainpipe.config import PACKAGED_CONFIGS
    from trainpipe.sweep.check import check_against_config
    from trainpipe.sweep.spec import load_spec

    spec = load_spec(PACKAGED_CONFIGS / "sweep_cifar100.yaml")
    assert Path(spec.base).name == "cifar100.yaml"
    assert spec.method == "grid" and spec.planned_trials() == 16
    assert {p.key for p in spec.varied} == {"model.name", "optim.name", "data.augment", "optim.lr"}
    check_against_config(spec)  # every combination of the grid validates
