"""`python -m bench [SECTION ...]`: run benchmark sections, refresh BENCHMARKS.md.

With no section named, every CPU section runs (`make bench`); `gpu` runs only when
named (`python -m bench gpu`, `make bench-gpu`) and refuses on a machine without CUDA;
`profile` (only when named) prints where one config's training time goes.
A section's own options follow its name: `python -m bench step --rounds 9`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections.abc import Sequence

from bench import Section, add_write_option, publish

# name -> (module, runs in `make bench`)
SECTIONS = {
    "startup": ("bench.startup", True),
    "data": ("bench.data", True),
    "step": ("bench.step", True),
    "sweep": ("bench.sweep", True),
    "gpu": ("bench.gpu", False),
    "defaults": ("bench.defaults", False),  # whole processes, minutes: `python -m bench defaults`
    "profile": ("bench.profile", False),  # a tool, not a measurement: `python -m bench profile CONFIG`
}


def _module(name: str):  # noqa: ANN202 (a module)
    try:
        return importlib.import_module(SECTIONS[name][0])
    except ModuleNotFoundError as e:
        if e.name == SECTIONS[name][0]:
            return None
        raise


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SECTIONS:  # one section with its own options
        mod = _module(argv[0])
        if mod is None:
            print(f"bench: section {argv[0]!r} is not available ({SECTIONS[argv[0]][0]} is missing).", file=sys.stderr)
            return 2
        return mod.main(argv[1:])
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks that every section runs")
    add_write_option(p)
    a = p.parse_args(argv)
    failed = []
    for name, (module, default) in SECTIONS.items():
        if not default:
            continue
        mod = _module(name)
        if mod is None:
            print(f"== {name}: skipped ({module} is not there yet)")
            continue
        print(f"== {name}", flush=True)
        start = time.perf_counter()
        section: Section = mod.run(quick=a.quick)
        print(f"== {name}: {time.perf_counter() - start:.0f}s{'' if section.ok else ', REQUIREMENT NOT MET'}\n")
        if not section.ok:
            failed.append(name)
        publish(section, a)
    if failed:
        print(f"bench: {', '.join(failed)} did not meet its bound (see above).", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
