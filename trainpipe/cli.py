"""The `trainpipe` command: a thin layer over the Python API.

Exit codes: 0 success; 1 a crash inside training; 2 bad input (config, file,
name), reported as one paragraph without a traceback (`--debug` shows it);
128 + the signal's number when a signal stopped it: 130 Ctrl-C (SIGINT), 143 SIGTERM,
138 SIGUSR1 (trainpipe.run.signals).
75 a sweep whose trials the machine failed (out of memory, disk full: run it again).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import textwrap
import traceback
from collections.abc import Sequence
from pathlib import Path

from trainpipe.errors import ConfigError, check_output

EXIT_OK, EXIT_CRASH, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


def _split_config_and_overrides(args: list[str]) -> tuple[str | None, list[str]]:
    """`[CONFIG] [KEY=VALUE ...]`: the first argument is the config unless it has '='.

    A first argument that names no file and looks like a dotted key (`train.epochs`) is an
    override that lost its value, not a config file that does not exist.
    """
    if args and "=" not in args[0]:
        first = args[0]
        if _looks_like_key(first):
            from trainpipe.config import resolve_config_path

            if not resolve_config_path(first).is_file():
                raise ConfigError(f"{first!r} is neither a config file nor an override: an override needs "
                                  f"key=value, e.g. {first}=VALUE (a config is a .yaml path or a packaged "
                                  f"name, see `trainpipe list configs`).")
        return first, args[1:]
    return None, args


def _looks_like_key(arg: str) -> bool:
    parts = arg.split(".")
    return (len(parts) > 1 and Path(arg).suffix.lower() not in (".yaml", ".yml", ".json")
            and "/" not in arg and all(p.isidentifier() for p in parts))


def cmd_train(a: argparse.Namespace) -> int:
    from trainpipe.run.train import claim_output, train

    config, overrides = _split_config_and_overrides(a.args)
    if a.slurm or a.dry_run:
        if not a.slurm:
            raise ConfigError("--dry-run of `trainpipe train` shows what --slurm would submit; add --slurm.")
        from trainpipe.launch.slurm import submit_train

        return submit_train(a.args, a.output, overwrite=a.overwrite, nproc=a.nproc, flags=_slurm_values(a),
                            dry_run=a.dry_run, wait=a.wait)
    if getattr(a, "nproc", None):
        from trainpipe.config import load
        from trainpipe.loop.distributed import check, launch

        check(load(config, overrides), a.nproc)  # a bad config fails here, once, not in every process
        claim_output(a.output, overwrite=a.overwrite)
        flags = (["--output", a.output] if a.output else []) + (["--quiet"] if a.quiet else [])
        return launch(a.nproc, (["--debug"] if a.debug else []) + ["train", *a.args, *flags])
    command = "trainpipe " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "trainpipe train"
    result = train(config, overrides, a.output, quiet=a.quiet, command=command, overwrite=a.overwrite)
    return EXIT_OK if result.status == "completed" else EXIT_CRASH


SLURM_FLAGS = ("partition", "time", "gpus_per_task", "cpus_per_task", "mem", "account", "qos", "array_parallelism",
               "signal_lead_s", "nodes")


def _slurm_arguments(p: argparse.ArgumentParser, *, sweep: bool = False) -> None:
    g = p.add_argument_group("Slurm (with --slurm; a sweep file's slurm: block sets the same)")
    g.add_argument("--slurm", action="store_true", help="submit to Slurm through submitit instead of running here"
                   + (" (a job array of workers; storage: the journal file)" if sweep else ""))
    g.add_argument("--wait", action="store_true", help="follow the job to its end (default: return once submitted)")
    g.add_argument("--partition")
    g.add_argument("--time", help="time limit per task: minutes or [D-]HH:MM:SS (default 1:00:00)")
    g.add_argument("--gpus-per-task", type=int)
    g.add_argument("--cpus-per-task", type=int, help="default 2")
    g.add_argument("--mem", help="memory per node, e.g. 16G")
    g.add_argument("--account")
    g.add_argument("--qos")
    if sweep:
        g.add_argument("--array-parallelism", type=int, help="array tasks that run at once (default: all)")
    else:
        g.add_argument("--nodes", type=int, help="nodes for DDP (with --nproc tasks on each; default 1)")
    g.add_argument("--signal-lead", dest="signal_lead_s", type=int,
                   help="seconds before the time limit that Slurm sends SIGUSR1 (default 120): the run checkpoints "
                        "and is requeued")


def _slurm_values(a: argparse.Namespace) -> dict[str, object]:
    return {k: getattr(a, k, None) for k in SLURM_FLAGS}


def cmd_resume(a: argparse.Namespace) -> int:
    from trainpipe.run.resume import resume

    if getattr(a, "nproc", None):
        from trainpipe.loop.distributed import launch

        flags = ["--quiet"] if a.quiet else []
        return launch(a.nproc, (["--debug"] if a.debug else []) + ["resume", a.run_dir, *a.overrides, *flags])
    command = "trainpipe resume " + shlex.join([a.run_dir, *a.overrides])
    result = resume(a.run_dir, a.overrides, quiet=a.quiet, command=command)
    return EXIT_OK if result.status == "completed" else EXIT_CRASH


def cmd_eval(a: argparse.Namespace) -> int:
    from trainpipe.run.evaluate import evaluate_checkpoint, print_report

    result = evaluate_checkpoint(a.target, split=a.split, tta=a.tta, device=a.device)
    if not a.quiet:
        print_report(result)
        _note_unfinished(result.json_path.parent)
    return EXIT_OK


def _note_unfinished(run_dir: Path) -> None:
    """A line on stderr when the run evaluated stopped before its end (killed, interrupted)."""
    from trainpipe.run import rundir

    if rundir.holds_run(run_dir) and rundir.status(run_dir) == "interrupted":
        print(f"note: {run_dir} was {rundir.describe_status(run_dir)}.", file=sys.stderr)


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
    if a.family in ("runs", "run"):
        return _list_runs(console, Path(a.folder or "runs"))
    families = dict(FAMILIES)
    wanted = a.family
    aliases = {f"{k}s": k for k in families} | {"configs": "config", "schedulers": "scheduler",
                                               "sched": "scheduler", "optim": "optimizer", "data": "dataset"}
    wanted = aliases.get(wanted, wanted) if wanted else None
    if wanted is not None and wanted not in families and wanted != "config":
        from trainpipe.errors import did_you_mean

        names = sorted(families) + ["config", "runs"]
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


def _list_runs(console: object, folder: Path) -> int:
    """The run directories in `folder`: status (a killed run reads as interrupted, with the
    command that resumes it), epochs, the best monitored value."""
    from rich.table import Table

    from trainpipe.run import rundir

    runs = sorted(p for p in folder.iterdir() if rundir.holds_run(p)) if folder.is_dir() else []
    if not runs:
        raise ConfigError(f"trainpipe list runs: {str(folder)!r} holds no run directories; pass the folder "
                          f"that holds them (default ./runs), e.g. `trainpipe list runs sweeps/lr/trials`.")
    table = Table(title=f"runs in {folder}")
    for col in ("run", "status", "epochs", "best"):
        table.add_column(col)
    for p in runs:
        s = rundir.read_summary(p)
        best = next(((k[5:], v) for k, v in s.items() if k.startswith("best/") and isinstance(v, (int, float))), None)
        epochs = s.get("epochs_run") or len(rundir.read_metrics(p))
        table.add_row(p.name, rundir.describe_status(p, s), str(epochs),
                      f"{best[0]} {best[1]:.4f}" if best else "-")
    console.print(table)  # type: ignore[attr-defined]
    return EXIT_OK


def cmd_sweep(a: argparse.Namespace) -> int:
    from trainpipe.sweep import run_sweep, sweep_status
    from trainpipe.sweep.run import dry_run

    if a.status:
        sys.stdout.write(sweep_status(a.sweep, a.output, a.storage, a.overrides))
        slurm_dir = (Path(a.sweep) if Path(a.sweep).is_dir() else None)
        if slurm_dir is not None and (slurm_dir / "slurm").is_dir():
            from trainpipe.launch.slurm import status_lines

            print("\n".join(status_lines(slurm_dir / "slurm")))
        return EXIT_OK
    from trainpipe.sweep.db import DbSettings

    given = {"retry_limit": a.db_retry_limit, "connect_timeout": a.db_connect_timeout,
             "statement_timeout": a.db_statement_timeout}
    db = DbSettings(**{k: v for k, v in given.items() if v is not None})
    if a.slurm:
        from trainpipe.launch.slurm import submit_sweep

        return submit_sweep(a.sweep, a.output, storage=a.storage, trials=a.trials, overrides=a.overrides,
                            workers=a.workers, flags=_slurm_values(a), dry_run=a.dry_run, wait=a.wait, db=db)
    if a.dry_run:
        dry_run(a.sweep, a.output, workers=1 if a.workers is None else a.workers, trials=a.trials,
                overrides=a.overrides)
        return EXIT_OK
    outcome = run_sweep(a.sweep, a.output, workers=1 if a.workers is None else a.workers, devices=a.devices,
                        storage=a.storage, trials=a.trials, overrides=a.overrides, budget=a.budget, db=db)
    if outcome.interrupted:
        return _signal_exit_code()
    return outcome.exit_code


def cmd_report(a: argparse.Namespace) -> int:
    from trainpipe.report import report

    md = report(a.dirs, a.output, evaluate=not a.no_eval, storage=a.storage)
    if not a.quiet:
        print(f"report: {md} and {md.with_name('report.html')}")
    return EXIT_OK


def cmd_lr_find(a: argparse.Namespace) -> int:
    from trainpipe.run.lr_find import lr_find

    config, overrides = _split_config_and_overrides(a.args)
    given = {k: v for k, v in (("steps", a.steps), ("min_lr", a.min_lr), ("max_lr", a.max_lr)) if v is not None}
    lr_find(config, overrides, a.output, **given, smoothing=a.smoothing, quiet=a.quiet, command="trainpipe " + shlex.join(sys.argv[1:]) if sys.argv[1:] else None)
    return EXIT_OK


def _key_for(family: str) -> str:
    return {"dataset": "data.dataset", "augment": "data.augment", "model": "model.name",
            "optimizer": "optim.name", "scheduler": "sched.name", "tracker": "tracking.trackers; options under tracking.<name>",
            "method": "method, in a sweep file"}.get(family, family)


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
              trainpipe lr-find configs/mnist.yaml              # loss vs lr: a suggested lr and a range to sweep
              trainpipe sweep lr.yaml --workers 2               # a W&B-format sweep file, run by Optuna
              trainpipe sweep lr.yaml train.epochs=1 --dry-run  # what would run, and how long it takes
              trainpipe sweep sweeps/lr --status                # its progress and results table
        """),
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    p.add_argument("--quiet", "-q", action="store_true", help="print nothing but errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # Every command takes --debug and --quiet too, before or after its other arguments.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    common.add_argument("--quiet", "-q", action="store_true", help="print nothing but errors")

    t = sub.add_parser("train", parents=[common], help="train one run from a config plus KEY=VALUE overrides")
    t.add_argument("args", nargs="*", metavar="[CONFIG] [KEY=VALUE]")
    t.add_argument("--output", "-o", help="the run directory (default runs/<name>-<time>)")
    t.add_argument("--overwrite", action="store_true",
                   help="when --output already holds a run, delete it and start over (default: refuse)")
    t.add_argument("--nproc", type=int, default=None, help="train on N processes with DDP (torchrun; with --slurm: "
                                                           "N Slurm tasks per node)")
    _slurm_arguments(t)
    t.add_argument("--dry-run", action="store_true", help="with --slurm: show the sbatch script, submit nothing")
    t.set_defaults(func=cmd_train)

    rs = sub.add_parser("resume", parents=[common], help="continue a run from its last checkpoint, optionally with KEY=VALUE overrides")
    rs.add_argument("run_dir", metavar="RUN_DIR", help="the run directory (holds config.yaml and checkpoints/)")
    rs.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. train.epochs=60 to train longer")
    rs.add_argument("--nproc", type=int, default=None, help="continue on N processes with DDP (torchrun)")
    rs.set_defaults(func=cmd_resume)

    ev = sub.add_parser("eval", parents=[common], help="evaluate a run's best checkpoint: metrics, per-class accuracy, confusion matrix")
    ev.add_argument("target", metavar="RUN_DIR|CHECKPOINT", help="a run directory or a .pt checkpoint")
    ev.add_argument("--split", choices=("test", "val"), default="test", help="which split (default test)")
    ev.add_argument("--tta", action="store_true", help="average with horizontally flipped images")
    ev.add_argument("--device", help="cpu, cuda, cuda:N or mps (default: the run's train.device)")
    ev.set_defaults(func=cmd_eval)

    c = sub.add_parser("check", parents=[common], help="validate a config and print it resolved, without training")
    c.add_argument("args", nargs="*", metavar="[CONFIG] [KEY=VALUE]")
    c.set_defaults(func=cmd_check)

    ls = sub.add_parser("list", parents=[common], help="list configs, datasets, augmentations, models, optimizers, "
                                                       "schedulers, trackers, sweep methods, runs")
    ls.add_argument("family", nargs="?", help="one family only, e.g. models; or runs: the run directories "
                                              "in FOLDER (default ./runs) and their status")
    ls.add_argument("folder", nargs="?", metavar="FOLDER", help="with `runs`: the folder holding them")
    ls.set_defaults(func=cmd_list)

    lf = sub.add_parser("lr-find", parents=[common], help="the learning-rate range test: loss vs lr (png + csv), a "
                                                         "suggested lr and a range to sweep")
    lf.add_argument("args", nargs="*", metavar="[CONFIG] [KEY=VALUE]")
    # Defaults live in trainpipe.run.lr_find (imported only when the command runs, not for --help).
    lf.add_argument("--steps", type=int, help="optimizer steps from --min-lr to --max-lr (default 100)")
    lf.add_argument("--min-lr", type=float, help="first lr (default 1e-08)")
    lf.add_argument("--max-lr", type=float, help="last lr (default 1)")
    lf.add_argument("--smoothing", type=float, default=None,
                    help="EMA weight of the smoothed loss (default: a window of 5%% of the steps, 0.8 at 100)")
    lf.add_argument("--output", "-o", help="folder for lr_find.png/.csv/.json (default runs/lr-find-<name>-<time>)")
    lf.set_defaults(func=cmd_lr_find)

    sw = sub.add_parser("sweep", parents=[common], help="run a sweep file (W&B format) as an Optuna study; resume; --status")
    sw.add_argument("sweep", metavar="SWEEP", help="a sweep file, or a sweep directory to resume or inspect")
    sw.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                    help="config overrides for every trial, e.g. train.epochs=1 data.fraction=0.05 for a smoke test "
                         "(its own directory: sweeps/<name>-<overrides>)")
    sw.add_argument("--output", "-o", help="the sweep directory (default sweeps/<name>)")
    sw.add_argument("--workers", type=int, default=None, help="worker processes on this machine (default 1); with "
                                                              "--slurm: array tasks (default: up to 4)")
    sw.add_argument("--devices", help="GPUs for the workers, round-robin, e.g. 0,1 (several workers may share one)")
    sw.add_argument("--storage", help="where the study lives: `journal` (an Optuna journal file in the sweep "
                                      "directory, for a shared file system, no server), journal:PATH, or a database "
                                      "URL shared by several machines, e.g. postgresql://user:pw@host/db "
                                      "(default: SQLite in the sweep directory)")
    sw.add_argument("--trials", type=int, help="total number of trials (overrides the file's run_cap)")
    sw.add_argument("--db-retry-limit", type=float, metavar="SECONDS",
                    help="how long the sweep rides out its database being unreachable (or an SQLite file locked) "
                         "before it stops cleanly with exit code 75 (default 300)")
    sw.add_argument("--db-connect-timeout", type=float, metavar="SECONDS",
                    help="PostgreSQL: give up opening a connection after this long (default 10)")
    sw.add_argument("--db-statement-timeout", type=float, metavar="SECONDS",
                    help="PostgreSQL: give up one statement after this long (default 60); SQLite: wait this long "
                         "for a locked file before the retries take over")
    _slurm_arguments(sw, sweep=True)
    sw.add_argument("--budget", help="wall-clock time the sweep may spend, s/m/h (e.g. 90m; overrides the file's "
                                     "budget:); no trial starts that would not finish inside it")
    sw.add_argument("--status", action="store_true", help="print the sweep's progress and results table, run nothing")
    sw.add_argument("--dry-run", action="store_true", help="list the trials that would run and estimate the wall "
                                                          "time from a few timed steps; write nothing")
    sw.set_defaults(func=cmd_sweep)

    r = sub.add_parser("report", parents=[common], help="write report.md + report.html for one run, several runs, or a sweep")
    r.add_argument("dirs", nargs="+", metavar="DIR", help="run directories, or one sweep directory")
    r.add_argument("--output", "-o", help="folder for the report (default: the run/sweep directory; ./report "
                                          "for several runs)")
    r.add_argument("--no-eval", action="store_true", help="skip re-evaluating a run's best checkpoint on the "
                                                          "test split (per-class accuracy, confusion matrix)")
    r.add_argument("--storage", help="a sweep's Optuna storage URL, when not the sweep's own optuna.db")
    r.set_defaults(func=cmd_report)

    return p


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """Options and KEY=VALUE arguments in any order, within a command and around it.

    argparse alone stops at the first positional after an option (`train CONFIG --output D
    train.epochs=5` failed with "unrecognized arguments"); each command's own parser reads
    its arguments intermixed, and --debug / --quiet may also come before the command.
    """
    parser = build_parser()
    argv = list(argv)
    flags = {"debug": False, "quiet": False}
    i = 0
    while i < len(argv) and argv[i] in ("--debug", "--quiet", "-q"):
        flags["debug" if argv[i] == "--debug" else "quiet"] = True
        i += 1
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    if i >= len(argv) or argv[i] not in commands:
        return parser.parse_args(argv)  # --help, a missing or unknown command: argparse's own message
    a = commands[argv[i]].parse_intermixed_args(argv[i + 1:])
    a.command = argv[i]
    a.debug, a.quiet = a.debug or flags["debug"], a.quiet or flags["quiet"]
    return a


def _signal_exit_code() -> int:
    """128 + the number of the signal that stopped the command (130 Ctrl-C, 143 SIGTERM, 138
    SIGUSR1), for a run and a sweep alike; 130 when no signal was recorded (a KeyboardInterrupt)."""
    if "trainpipe.run.signals" not in sys.modules:  # stopped before any signal handling began
        return EXIT_INTERRUPTED
    from trainpipe.run import signals

    return signals.exit_code(signals.received())  # the one rule, also for Slurm tasks (launch.slurm)


def _interrupted(run_dir: Path | None) -> int:
    """Say how an interrupted run continues; the exit code is 128 + the signal's number."""
    code = _signal_exit_code()
    if run_dir is None:
        print("interrupted.", file=sys.stderr)
        return code
    from trainpipe.run import rundir

    at = rundir.read_summary(run_dir).get("stopped_at") if rundir.holds_run(run_dir) else None
    if os.environ.get("RANK", "0") != "0":
        return code
    if at:
        where = f"at epoch {at['epoch']}, batch {at['batch']}" if at.get("batch") else f"after epoch {at['epoch']}"
        print(f"interrupted {where}: {run_dir} saved a checkpoint there; `{rundir.resume_command(run_dir)}` "
              f"continues the run from that step.", file=sys.stderr)
    else:
        print(f"interrupted: {run_dir} keeps its last checkpoint; `{rundir.resume_command(run_dir)}` continues "
              f"the run from there.", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    a = parse(sys.argv[1:] if argv is None else argv)
    try:
        if getattr(a, "output", None) is not None:
            check_output(a.output)
        return a.func(a)
    except ConfigError as e:
        if a.debug:
            traceback.print_exc()
        msg = " ".join(str(e).split())
        if os.environ.get("RANK", "0") == "0":  # under DDP every rank meets the same bad input; one says so
            print(f"error: {msg}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt as e:
        return _interrupted(getattr(e, "run_dir", None))
    except Exception as e:
        if a.debug:
            traceback.print_exc()
        print(f"crash: {type(e).__name__}: {e} (rerun with --debug for the traceback)", file=sys.stderr)
        return EXIT_CRASH


if __name__ == "__main__":
    raise SystemExit(main())
