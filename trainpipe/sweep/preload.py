"""Imported once by the sweep's forkserver: every registry's modules (datasets, models, ops,
optimizers, schedules, trackers) are loaded before the workers fork from it, so no trial
pays for those imports again."""

from trainpipe.registry import FAMILIES

for _registry in FAMILIES.values():
    _registry.names()
