"""The `trainpipe` command: a thin layer over the Python API.

Exit codes: 0 success; 1 a crash inside training; 2 bad input (config, file,
name), reported as one paragraph without a traceback (`--debug` shows it);
130 interrupted with Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import textwrap
import traceback
from collections.abc import Sequence

from trainpipe.errors import ConfigError

EXIT_OK, EXIT_CRASH, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


def _split_config_and_overrides(args: list[str]) -> tuple[str | None, list[str]]:
    """`[CONFIG] [KEY=VALUE ...]`: the first argument is the config unless it has '='."""
    if args and "=" not in args[0]:
        return args[0], args[1:]
    return None, args


def cmd_train(a: argparse.Namespace) -> int:
    from trainpipe.runner import train

    config, overrides = _split_config_and_overrides(a.args)
    if getattr(a, "nproc", None):
        from trainpipe.config import load
        from trainpipe.distributed import check, launch

        check(load(config, overrides), a.nproc)  # a bad config fails here, once, not in every process
        flags = (["--output", a.output] if a.output else []) + (["--quiet"] if a.quiet else [])
        return launch(a.nproc, (["--debug"] if a.debug else []) + ["train", *a.args, *flags])
    command = "trainpipe " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "trainpipe train"
    result = train(config, overrides, a.output, quiet=a.quiet, command=command)
    return EXIT_OK if result.status == "completed" else EXIT_CRASH


def cmd_resume(a: argparse.Namespace) -> int:
    from trainpipe.resume import resume

    if getattr(a, "nproc", None):
        from trainpipe.distributed import launch

        flags = ["--quiet"] if a.quiet else []
        return launch(a.nproc, (["--debug"] if a.debug else []) + ["resume", a.run_dir, *a.overrides, *flags])
    command = "trainpipe resume " + shlex.join([a.run_dir, *a.overrides])
    result = resume(a.run_dir, a.overrides, quiet=a.quiet, command=command)
    return EXIT_OK if result.status == "completed" else EXIT_CRASH


def cmd_eval(a: argparse.Namespace) -> int:
    from trainpipe.evaluate import evaluate_checkpoint, print_report

    result = evaluate_checkpoint(a.target, split=a.split, tta=a.tta, device=a.device)
    if not a.quiet:
        print_report(result)
    return EXIT_OK


def cmd_check(a: argparse.Namespace) -> int:
    import yaml

    from trainpipe.config import load

    config, overrides = _split_config_and_overrides(a.args)
    cfg = load(config, overrides)
    sys.stdout.write(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    print(f"# config is valid ({config or 'packaged quickstart'})", file=sys.stderr)
    return EXIT_OK


def cmd_list(a: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from trainpipe.config import PACKAGED_CONFIGS
    from trainpipe.registry import FAMILIES

    console = Console(highlight=False)
    families = dict(FAMILIES)
    wanted = a.family
    aliases = {f"{k}s": k for k in families} | {"configs": "config", "schedulers": "scheduler",
                                               "sched": "scheduler", "optim": "optimizer", "data": "dataset"}
    wanted = aliases.get(wanted, wanted) if wanted else None
    if wanted is not None and wanted not in families and wanted != "config":
        from trainpipe.errors import did_you_mean

        names = sorted(families) + ["config"]
        raise ConfigError(
            f"trainpipe list: unknown family {a.family!r}{did_you_mean(wanted, names) or '.'} "
            f"Valid families: {', '.join(names)}."
        )
    if wanted in (None, "config"):
        table = Table(title="configs (packaged; use the name or a path)", show_header=False)
        for p in sorted(PACKAGED_CONFIGS.glob("*.yaml")):
            first = next((l.lstrip("# ").strip() for l in p.read_text().splitlines() if l.startswith("#")), "")
            table.add_row(p.stem, first)
        console.print(table)
    for fam, reg in families.items():
        if wanted not in (None, fam):
            continue
        table = Table(title=f"{fam} (config key: {_key_for(fam)})", show_header=False)
        for name, desc in reg.describe():
            table.add_row(name, desc)
        console.print(table)
    return EXIT_OK


def cmd_sweep(a: argparse.Namespace) -> int:
    from trainpipe.sweep import run_sweep, sweep_status
    from trainpipe.sweep.run import dry_run

    if a.status:
        sys.stdout.write(sweep_status(a.sweep, a.output, a.storage, a.overrides))
        return EXIT_OK
    if a.dry_run:
        dry_run(a.sweep, a.output, workers=a.workers, trials=a.trials, overrides=a.overrides)
        return EXIT_OK
    outcome = run_sweep(a.sweep, a.output, workers=a.workers, devices=a.devices, storage=a.storage, trials=a.trials,
                        overrides=a.overrides)
    return EXIT_INTERRUPTED if outcome.interrupted else EXIT_OK


def cmd_report(a: argparse.Namespace) -> int:
    from trainpipe.report import report

    md = report(a.dirs, a.output, evaluate=not a.no_eval, storage=a.storage)
    print(f"report: {md} and {md.with_name('report.html')}")
    return EXIT_OK


def _key_for(family: str) -> str:
    return {"dataset": "data.dataset", "augment": "data.augment", "model": "model.name",
            "optimizer": "optim.name", "scheduler": "sched.name", "tracker": "tracking.*"}.get(family, family)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="trainpipe",
        description="Train image and tensor classifiers from one YAML config; run sweeps; write reports.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=textwrap.dedent("""\
            examples:
              trainpipe train                                   # the quickstart (digits)
              trainpipe train configs/mnist.yaml optim.lr=0.1   # a config plus overrides
              trainpipe check configs/cifar10.yaml              # validate, print the resolved config
              trainpipe resume runs/quickstart-... train.epochs=40  # continue (and extend) a run
              trainpipe eval runs/quickstart-... --split test    # metrics, per-class accuracy, confusion matrix
              trainpipe list models
              trainpipe sweep lr.yaml --workers 2               # a W&B-format sweep file, run by Optuna
              trainpipe sweep lr.yaml train.epochs=1 --dry-run  # what would run, and how long it takes
              trainpipe sweep sweeps/lr --status                # its progress and results table
        """),
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train one run from a config plus KEY=VALUE overrides")
    t.add_argument("args", nargs="*", metavar="[CONFIG] [KEY=VALUE]")
    t.add_argument("--output", "-o", help="the run directory (default runs/<name>-<time>)")
    t.add_argument("--quiet", "-q", action="store_true", help="print nothing but errors")
    t.add_argument("--nproc", type=int, default=None, help="train on N processes with DDP (torchrun)")
    t.set_defaults(func=cmd_train)

    rs = sub.add_parser("resume", help="continue a run from its last checkpoint, optionally with KEY=VALUE overrides")
    rs.add_argument("run_dir", metavar="RUN_DIR", help="the run directory (holds config.yaml and checkpoints/)")
    rs.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. train.epochs=60 to train longer")
    rs.add_argument("--quiet", "-q", action="store_true", help="print nothing but errors")
    rs.add_argument("--nproc", type=int, default=None, help="continue on N processes with DDP (torchrun)")
    rs.set_defaults(func=cmd_resume)

    ev = sub.add_parser("eval", help="evaluate a run's best checkpoint: metrics, per-class accuracy, confusion matrix")
    ev.add_argument("target", metavar="RUN_DIR|CHECKPOINT", help="a run directory or a .pt checkpoint")
    ev.add_argument("--split", choices=("test", "val"), default="test", help="which split (default test)")
    ev.add_argument("--tta", action="store_true", help="average with horizontally flipped images")
    ev.add_argument("--device", help="cpu, cuda, cuda:N or mps (default: the run's train.device)")
    ev.add_argument("--quiet", "-q", action="store_true", help="write the files, print nothing")
    ev.set_defaults(func=cmd_eval)

    c = sub.add_parser("check", help="validate a config and print it resolved, without training")
    c.add_argument("args", nargs="*", metavar="[CONFIG] [KEY=VALUE]")
    c.set_defaults(func=cmd_check)

    ls = sub.add_parser("list", help="list configs, datasets, augmentations, models, optimizers, schedulers")
    ls.add_argument("family", nargs="?", help="one family only, e.g. models")
    ls.set_defaults(func=cmd_list)

    sw = sub.add_parser("sweep", help="run a sweep file (W&B format) as an Optuna study; resume; --status")
    sw.add_argument("sweep", metavar="SWEEP", help="a sweep file, or a sweep directory to resume or inspect")
    sw.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                    help="config overrides for every trial, e.g. train.epochs=1 data.fraction=0.05 for a smoke test "
                         "(its own directory: sweeps/<name>-<overrides>)")
    sw.add_argument("--output", "-o", help="the sweep directory (default sweeps/<name>)")
    sw.add_argument("--workers", type=int, default=1, help="worker processes on this machine (default 1)")
    sw.add_argument("--devices", help="GPUs for the workers, round-robin, e.g. 0,1 (several workers may share one)")
    sw.add_argument("--storage", help="a database URL shared by several machines, e.g. postgresql://user:pw@host/db "
                                      "(default: SQLite in the sweep directory)")
    sw.add_argument("--trials", type=int, help="total number of trials (overrides the file's run_cap)")
    sw.add_argument("--status", action="store_true", help="print the sweep's progress and results table, run nothing")
    sw.add_argument("--dry-run", action="store_true", help="list the trials that would run and estimate the wall "
                                                          "time from a few timed steps; write nothing")
    sw.set_defaults(func=cmd_sweep)

    r = sub.add_parser("report", help="write report.md + report.html for one run, several runs, or a sweep")
    r.add_argument("dirs", nargs="+", metavar="DIR", help="run directories, or one sweep directory")
    r.add_argument("--output", "-o", help="folder for the report (default: the run/sweep directory; ./report "
                                          "for several runs)")
    r.add_argument("--no-eval", action="store_true", help="skip re-evaluating a run's best checkpoint on the "
                                                          "test split (per-class accuracy, confusion matrix)")
    r.add_argument("--storage", help="a sweep's Optuna storage URL, when not the sweep's own optuna.db")
    r.set_defaults(func=cmd_report)

    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    try:
        return a.func(a)
    except ConfigError as e:
        if a.debug:
            traceback.print_exc()
        msg = " ".join(str(e).split())
        if os.environ.get("RANK", "0") == "0":  # under DDP every rank meets the same bad input; one says so
            print(f"error: {msg}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted: the run directory's summary.json says how far it got.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:
        if a.debug:
            traceback.print_exc()
        print(f"crash: {type(e).__name__}: {e} (rerun with --debug for the traceback)", file=sys.stderr)
        return EXIT_CRASH


if __name__ == "__main__":
    raise SystemExit(main())
