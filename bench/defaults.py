"""Fast by default: the packaged configs as they are, against the same configs with every
speed option set by hand, and against a plain hand-written PyTorch loop of the same training.

Each variant is a whole process (`python -m trainpipe train ...`,
`python -m bench.plain_cifar ...`), timed from start to exit: import, data, model, training, the test evaluation, the files
a run writes. Rounds alternate the order of the variants, so that a busy shared machine slows
them alike; the table gives the median wall-clock seconds with the range over rounds, the
processes' CPU seconds (theirs and their DataLoader workers'), and ratios of medians; for
trainpipe's variants also the seconds the run itself recorded (`wall_time_s`: without the
interpreter's start-up and imports, a few seconds that vary between identical processes and
make up most of a short config's process).

Workloads:
- `resnet18`: the CIFAR-10 training course reports use: timm's resnet18 (10 classes, no
  pretraining), random crop (padding 4 with zeros, torchvision's default) + horizontal flip, SGD-Nesterov (momentum
  0.9, weight decay 5e-4) under a one-cycle schedule at lr 0.2, batch 256, one epoch, then
  the test set; on the JPEG copy of CIFAR-10 (`--cifar10 DIR`, an image folder with train/
  and test/). The rounds train on `--fraction` of the images (the same subset size on every
  side); `--full` adds one round on the whole epoch. trainpipe reads the data from its
  decode-once cache, which a warm-up run fills (not timed); the plain loop decodes the JPEGs
  every epoch, as torchvision's ImageFolder does.
- packaged configs (`quickstart`, `cifar10_cpu`, `mnist`), one epoch each, defaults against
  hand-set options only (the plain loop is written for the resnet18 workload).

"Hand-set" is every speed option a user can set in a config, each to its fastest value on
the device: `train.channels_last=true` for conv nets, `data.loader=device`, and on a GPU
`train.precision=bf16` and `train.compile=true`. `--also bf16,compile` adds the hand-set
options with each of those as well ("hand-set + bf16", ...), so that the table shows which
hand-set variant is the fastest on this machine (on the CPU, fp32 and no compiling were
chosen for the hand-set variant from that measurement); the defaults are compared with the
fastest hand-set variant of each workload.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench import ROOT, SHARED_DATA, Section, add_write_option, hardware, median, publish, table, today

# The bounds: the resnet18 epoch with nothing set by hand at or below this share of
# the plain loop's time, and every config's defaults within this factor of the hand-set options.
MAX_VS_PLAIN = 0.70
MAX_VS_HAND = 1.02

COURSE = {"name": "bench-defaults", "seed": 0,
          "data": {"dataset": "imagefolder", "batch_size": 256, "val_split": 0,
                   "augment": [{"name": "random_crop", "padding": 4, "padding_mode": "zero"}, "hflip"]},
          "model": {"name": "timm", "arch": "resnet18"},
          "optim": {"name": "sgd", "lr": 0.2, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
          "sched": {"name": "onecycle"},
          "train": {"epochs": 1}}


@dataclass
class Variant:
    name: str
    command: list[str]
    env: dict[str, str | None] = field(default_factory=dict)  # None removes a variable
    beside: list[list[str]] = field(default_factory=list)  # commands started together with it


@dataclass
class Times:
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    run: list[float] = field(default_factory=list)  # a trainpipe run's own wall_time_s (summary.json)


def run_seconds(v: Variant) -> float | None:
    """The `wall_time_s` a trainpipe variant's run recorded in its summary.json: the run from
    its config to its last file, without the interpreter's start-up and imports (which whole
    processes of a few seconds are mostly made of, and which vary between identical processes)."""
    cmd = v.command
    if "--output" not in cmd:
        return None
    summary = Path(cmd[cmd.index("--output") + 1]) / "summary.json"
    try:
        return float(json.loads(summary.read_text())["wall_time_s"])
    except (OSError, KeyError, ValueError):
        return None


def run_process(v: Variant, *, timeout: float | None = None) -> tuple[float, float]:
    """(wall-clock seconds until every copy exited, CPU seconds of the processes and their
    waited-for children) of one run of the variant (and the commands beside it)."""
    env = {k: val for k, val in {**os.environ, **v.env}.items() if val is not None}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    procs = [subprocess.Popen(c, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for c in [v.command, *v.beside]]
    results = [(p, *p.communicate(timeout=timeout)) for p in procs]
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    for p, _, err in results:
        if p.returncode != 0:
            raise RuntimeError(f"{v.name} failed ({p.returncode}): {' '.join(v.command)}\n{err[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def alternate(variants: Sequence[Variant], rounds: int) -> dict[str, Times]:
    """Each variant once per round, the order reversed every other round."""
    out = {v.name: Times() for v in variants}
    for r in range(rounds):
        for v in (variants if r % 2 == 0 else list(reversed(variants))):
            wall, cpu = run_process(v)
            out[v.name].wall.append(wall)
            out[v.name].cpu.append(cpu)
            own = run_seconds(v)
            if own is not None:
                out[v.name].run.append(own)
            print(f"    {v.name}: {wall:.1f}s wall, {cpu:.1f}s CPU"
                  + (f", the run itself {own:.1f}s" if own is not None else ""), flush=True)
    return out


def trainpipe_cmd(config: str, overrides: Sequence[str], out: Path) -> list[str]:
    return [sys.executable, "-m", "trainpipe", "train", config, *overrides, "tracking.plots=false",
            "tracking.progress=none", "--output", str(out), "--overwrite", "--quiet"]


def hand_set(device: str) -> list[str]:
    """Every speed option a config can set, at its fastest for a conv net on `device`."""
    ov = ["data.loader=device", "train.channels_last=true"]
    if device == "cuda":
        ov += ["train.precision=bf16", "train.compile=true"]
    return ov


# `--also NAME`: the hand-set options with one more setting, to show which hand-set variant is fastest.
ALSO = {"bf16": ["train.precision=bf16"], "compile": ["train.compile=true"], "fp32": ["train.precision=fp32"],
        "no-compile": ["train.compile=false"]}
HAND = "trainpipe hand-set"


def hand_variants(config: str, common: list[str], out: Path, device: str, also: Sequence[str]) -> list[Variant]:
    """The hand-set variant, then one per `also` name (the hand-set options plus that setting)."""
    return [Variant(HAND, trainpipe_cmd(config, common + hand_set(device), out / "hand")),
            *(Variant(f"{HAND} + {name}", trainpipe_cmd(config, common + hand_set(device) + ALSO[name],
                                                         out / f"hand-{name}")) for name in also)]


def vs_fastest_hand(times: dict[str, Times]) -> tuple[float, str]:
    """(defaults / the hand-set variant with the lowest median wall-clock time, its name)."""
    fastest = min((n for n in times if n.startswith(HAND)), key=lambda n: median(times[n].wall))
    return ratio(times, "trainpipe defaults", fastest), fastest


def course_variants(data: Path, fraction: float, work: Path, device: str, also: Sequence[str] = ()) -> list[Variant]:
    cfg = work / "course.yaml"
    cfg.write_text(json.dumps(COURSE))  # JSON is YAML
    common = [f"data.path={data}", f"data.fraction={fraction}", f"data.cache_dir={work / 'cache'}",
              f"train.device={device}"]
    # As a module: run as a file, bench/ would come first on sys.path and its profile.py
    # would hide the standard library's.
    plain = [sys.executable, "-m", "bench.plain_cifar", "--data", str(data), "--fraction", str(fraction),
             "--lr", str(COURSE["optim"]["lr"]), "--batch-size", str(COURSE["data"]["batch_size"]), "--device", device]
    return [Variant("trainpipe defaults", trainpipe_cmd(str(cfg), common, work / "runs" / "defaults")),
            *hand_variants(str(cfg), common, work / "runs", device, also),
            Variant("plain PyTorch loop", plain)]


def thread_variants(data: Path, fraction: float, work: Path) -> list[Variant]:
    """Two trainings at once on the machine's cores, as two sweep workers run their trials:
    one intra-op thread each (what sweep workers set: the cores shared out) against torch's
    default (as many threads as cores, each)."""
    cfg = work / "course.yaml"
    common = [f"data.path={data}", f"data.fraction={fraction}", f"data.cache_dir={work / 'cache'}", "train.device=cpu"]
    return [Variant(f"2 processes x {n}", trainpipe_cmd(str(cfg), common, work / "runs" / f"threads-{env}-a"),
                    env={"OMP_NUM_THREADS": env},
                    beside=[trainpipe_cmd(str(cfg), common, work / "runs" / f"threads-{env}-b")])
            for n, env in (("1 thread", "1"), ("torch's default threads", None))]


def config_variants(name: str, overrides: Sequence[str], work: Path, device: str,
                    also: Sequence[str] = ()) -> list[Variant]:
    common = [*overrides, "train.epochs=1", f"data.cache_dir={work / 'cache'}", f"train.device={device}"]
    return [Variant("trainpipe defaults", trainpipe_cmd(name, common, work / "runs" / f"{name}-defaults")),
            *hand_variants(name, common, work / "runs" / name, device, also)]


def packaged(data_root: Path, cifar10: Path | None, quick: bool, fraction: float = 0.2) -> dict[str, list[str]]:
    """The packaged configs this machine has the data for, with the overrides that point them at it."""
    out: dict[str, list[str]] = {"quickstart": []}
    if quick:
        return out
    mnist = data_root / "mnist" / "data.npz"
    if mnist.is_file():
        out["mnist"] = ["data.dataset=arrays", f"data.path={mnist}", "data.fraction=0.2"]
    if cifar10 is not None:  # the folder the resnet18 rounds train on
        out["cifar10_cpu"] = ["data.dataset=imagefolder", f"data.path={cifar10}", "data.download=false",
                              f"data.fraction={fraction}"]
    return out


def rows_of(label: str, times: dict[str, Times], baseline: str = "trainpipe defaults") -> list[list[str]]:
    rows = []
    base = median(times[baseline].wall)
    base_run = median(times[baseline].run) if times[baseline].run else None
    for name, t in times.items():
        m = median(t.wall)
        own = (f"{median(t.run):.1f} ({base_run / median(t.run):.3f})"
               if t.run and base_run and len(t.run) == len(t.wall) else "-")
        rows.append([label, name, f"{m:.1f} ({min(t.wall):.1f}-{max(t.wall):.1f})", f"{median(t.cpu):.1f}",
                     f"{base / m:.3f}", own])
    return rows


def ratio(times: dict[str, Times], a: str, b: str) -> float:
    return median(times[a].wall) / median(times[b].wall)


def unpack(tar: Path, work: Path) -> Path:
    dest = work / "cifar10"
    if not (dest / "train").is_dir():
        dest.mkdir(parents=True, exist_ok=True)
        subprocess.run(["tar", "-xzf", str(tar), "-C", str(dest)], check=True)
    return dest


def subset_folder(data: Path, work: Path, per_class: tuple[int, int]) -> Path:
    """The first N training and M test images of every class of `data`, linked into a folder
    of the same layout: a smaller workload with the same images, model and recipe."""
    dest = work / f"cifar10-{per_class[0]}-{per_class[1]}"
    for split, n in zip(("train", "test"), per_class):
        for cls in sorted(p for p in (data / split).iterdir() if p.is_dir()):
            (dest / split / cls.name).mkdir(parents=True, exist_ok=True)
            for f in sorted(cls.iterdir())[:n]:
                target = dest / split / cls.name / f.name
                if not target.exists():
                    try:
                        os.link(f, target)
                    except OSError:  # another file system
                        target.write_bytes(f.read_bytes())
    return dest


def tiny_folder(work: Path) -> Path:
    from bench.gpu import make_image_folder

    return make_image_folder(work / "tiny", train=26, test=4)


def _load() -> str:
    return ", ".join(f"{x:.1f}" for x in os.getloadavg())


def run(quick: bool = False, *, cifar10: Path | None = None, rounds: int | None = None, fraction: float = 0.2,
        full: bool = False, full_rounds: int = 1, device: str = "cpu", configs: bool = True, threads: bool = True,
        config_rounds: int | None = None, per_class: tuple[int, int] | None = None, also: Sequence[str] = (),
        only: Sequence[str] = (),
        work: Path | None = None, command: str = "python -m bench defaults") -> Section:
    """`rounds=0` leaves out the rounds on a share of the epoch (then `full` gives the ratio
    to the plain loop). Every workload's table row carries the 1-minute load average before
    and after its rounds (the machine may be shared)."""
    rounds = (1 if quick else 5) if rounds is None else rounds
    config_rounds = config_rounds or (1 if quick else 3)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="trainpipe-bench-defaults-") as tmp:
        work = work or Path(tmp)
        if quick and cifar10 is None:
            data, fraction = tiny_folder(work), 1.0
        else:
            found = cifar10 or SHARED_DATA / "cifar10" / "images.tar.gz"
            if not found.exists():
                raise SystemExit(f"bench defaults: no CIFAR-10 at {found}; pass --cifar10 DIR|TAR")
            data = found if found.is_dir() else unpack(found, work)
        whole_data = data
        where = f", {fraction:g} of an epoch" if fraction < 1 else ""
        if per_class is not None:
            data = subset_folder(data, work, per_class)
            where = f", {per_class[0]} train + {per_class[1]} test images per class" + where
        rows: list[list[str]] = []
        notes: list[str] = []

        def section(label: str, variants: Sequence[Variant], n: int, baseline: str = "trainpipe defaults",
                    warm_up: bool = True) -> dict[str, Times]:
            print(f"== {label}, {n} rounds (load {_load()})", flush=True)
            if warm_up and not quick:  # fills trainpipe's decode-once cache (not in the table)
                wall, cpu = run_process(variants[0])
                notes.append(f"{label}: the untimed first run of the defaults, which also decoded the images "
                             f"into trainpipe's cache, took {wall:.1f} s wall, {cpu:.1f} s CPU.")
                print(f"    warm-up: {wall:.1f}s wall, {cpu:.1f}s CPU", flush=True)
            before = os.getloadavg()[0]
            t = alternate(variants, n)
            load = f"{before:.1f} / {os.getloadavg()[0]:.1f}"
            rows.extend(r + [load] for r in rows_of(label, t, baseline))
            return t

        vs_plain = full_vs_plain = None
        vs_hand: list[tuple[float, str]] = []  # (defaults / the fastest hand-set variant, its name)
        if rounds:
            course = section(f"resnet18{where}", course_variants(data, fraction, work, device, also), rounds)
            vs_plain = ratio(course, "trainpipe defaults", "plain PyTorch loop")
            vs_hand.append(vs_fastest_hand(course))
        if full:
            whole = section("resnet18, full epoch", course_variants(whole_data, 1.0, work, device, also), full_rounds,
                            warm_up=True)
            full_vs_plain = ratio(whole, "trainpipe defaults", "plain PyTorch loop")
            vs_hand.append(vs_fastest_hand(whole))
        if threads and device == "cpu":
            t = section(f"2 at once, resnet18{where}", thread_variants(data, fraction, work), config_rounds,
                        baseline="2 processes x 1 thread", warm_up=False)
            notes.append(f"Two trainings at once on the 2 cores: one thread each took "
                         f"{ratio(t, '2 processes x 1 thread', list(t)[1]):.3f}x the time of "
                         f"torch's default threads each.")
        if configs:
            for name, overrides in packaged(SHARED_DATA, whole_data if not quick else None, quick, fraction).items():
                if only and name not in only:
                    continue
                t = section(name + (f" ({overrides[-1]})" if overrides else ""),
                            config_variants(name, overrides, work, device, also), config_rounds)
                vs_hand.append(vs_fastest_hand(t))
    load_after = os.getloadavg()
    body = table(["workload", "variant", "wall s (median, min-max)", "CPU s (median)",
                  "speed vs defaults (median wall)", "the run itself: s (speed vs defaults)", "load before / after"],
                 rows)
    print(body)
    main_ratio = full_vs_plain if full_vs_plain is not None else vs_plain
    plain_ok = main_ratio is not None and main_ratio <= MAX_VS_PLAIN
    hand_ok = bool(vs_hand) and max(v for v, _ in vs_hand) <= MAX_VS_HAND
    if main_ratio is not None:
        notes.append("resnet18 defaults / plain loop: "
                     + ", ".join(f"{v:.3f} on {w}" for v, w in ((vs_plain, "the rounds' workload"),
                                                                (full_vs_plain, "the full epoch")) if v is not None)
                     + f" (bound {MAX_VS_PLAIN}: {'within' if plain_ok else 'OVER'}).")
    if vs_hand:
        worst, which = max(vs_hand)
        notes.append(f"defaults / the fastest hand-set variant ({which}), worst workload: {worst:.3f} (bound {MAX_VS_HAND}: "
                     f"{'within' if hand_ok else 'OVER'}).")
    md = "\n".join([
        (f"`{command}`, measured {today()} on {device}, "
         f"{hardware(threads=False)}; 1/5/15-minute load average {', '.join(f'{x:.1f}' for x in load_before)} "
         f"before and {', '.join(f'{x:.1f}' for x in load_after)} after (the benchmark's own processes count in it). "
         f"Whole processes, in alternating order"
         f"{' (quick mode: tiny sizes, not for quoting)' if quick else ''}."),
        "",
        body,
        "",
        *notes,
    ])
    return Section("defaults", md, plain_ok and hand_ok)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench defaults", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes, 1 round: checks that it runs")
    p.add_argument("--cifar10", type=Path, help="the CIFAR-10 image folder or its images.tar.gz "
                   "(default: ../shared/data/cifar10/images.tar.gz)")
    p.add_argument("--rounds", type=int, help="rounds of every variant on --fraction of the epoch (default 5; "
                   "0 leaves them out)")
    p.add_argument("--fraction", type=float, default=0.2, help="share of the epoch the rounds train on")
    p.add_argument("--per-class", type=lambda v: tuple(int(x) for x in v.split(",")), metavar="TRAIN,TEST",
                   help="the rounds train and test on the first TRAIN and TEST images of every class")
    p.add_argument("--full", action="store_true", help="also the full resnet18 epoch")
    p.add_argument("--full-rounds", type=int, default=1, help="rounds of the full epoch (default 1)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--config-rounds", type=int, help="rounds of the packaged configs and the threads check (default 3)")
    p.add_argument("--no-configs", action="store_true", help="the resnet18 workload only")
    p.add_argument("--config", action="append", default=[], metavar="NAME",
                   help="only this packaged config (quickstart, mnist, cifar10_cpu); may be repeated")
    p.add_argument("--no-threads", action="store_true", help="skip the two-trainings-at-once check")
    p.add_argument("--also", type=lambda v: [x for x in v.split(",") if x], default=[], metavar="NAME[,NAME]",
                   help=f"more hand-set variants: the hand-set options plus one of {', '.join(ALSO)} each")
    add_write_option(p)
    argv_list = list(sys.argv[1:] if argv is None else argv)
    a = p.parse_args(argv_list)
    unknown = [x for x in a.also if x not in ALSO]
    if unknown:
        p.error(f"--also: unknown {', '.join(unknown)}; choose from {', '.join(ALSO)}")
    section = run(a.quick, cifar10=a.cifar10, rounds=a.rounds, fraction=a.fraction, full=a.full,
                  full_rounds=a.full_rounds, device=a.device,
                  configs=not a.no_configs, threads=not a.no_threads, config_rounds=a.config_rounds,
                  per_class=a.per_class, also=a.also, only=a.config, command=" ".join(["python -m bench defaults", *argv_list]))
    publish(section, a)
    return 0 if section.ok or a.quick else 1  # --quick checks that it runs; its sizes prove no bound


if __name__ == "__main__":
    raise SystemExit(main())
