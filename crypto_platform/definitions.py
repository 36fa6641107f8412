"""The one place that assembles the platform's ``dg.Definitions``.

``workspace.yaml`` and ``[tool.dg]`` in ``pyproject.toml`` point Dagster here
(``crypto_platform.definitions``). Dagster's own loader (``dg.load_definitions_from_modules``)
collects whatever the modules in :data:`DEFINITION_MODULES` define at module scope: assets, asset
specs, asset checks, sensors, schedules and jobs, each once however often the modules import each
other's. Adding an asset means defining it in one of those modules; a new module is one more line
in the list. Resources come from :func:`crypto_platform.resources.build_resources`, built once from
the settings.

Loading stays fast and free of side effects: no network connection, no process start, no file
written at import (on a temporary Dagster home it prints one line saying where state persists).
Connections open, and the local stand-ins start, only when a run or a sensor tick uses a resource.
Bad settings fail the load with a :class:`~crypto_platform.settings.SettingsError` naming the variable.

Runs execute their steps in their own process (``in_process_executor``, as the stream's jobs already
do), also the runs the UI launches (materializations, backfills). Under Dagster's default
multiprocess executor every step is a new process that imports these definitions first, about 7 s
of a core on this machine under load; a backfill run of seven days has ten or more steps (each raw
table, the bars, the warehouse copies, their checks), so the imports cost more than the data. A
backfill's parallelism comes from its runs instead: the run queue runs several side by side.
"""

from __future__ import annotations

import multiprocessing
import sys
import warnings
from types import ModuleType

import dagster as dg

from crypto_platform import checks, schedules, sensors
from crypto_platform.assets import alerts, bars, daily, landing_log, raw, warehouse
from crypto_platform.local.stack import temporary_home_notice
from crypto_platform.resources import build_resources
from crypto_platform.settings import Settings, load_settings

# One line per module with definitions at module scope, upstream first.
DEFINITION_MODULES: list[ModuleType] = [
    landing_log,
    raw,
    bars,
    daily,
    warehouse,
    alerts,
    checks,
    sensors,
    schedules,
]


def build_definitions(settings: Settings | None = None) -> dg.Definitions:
    """Definitions for ``settings`` (default: the environment); tests pass their own settings."""
    settings = settings or load_settings()
    with warnings.catch_warnings():
        # Marked preview in 1.13, yet it is Dagster's loader for module-scope definitions of every kind
        # (the asset-only loaders would leave sensors and jobs to a hand-written scan); the asset-graph
        # snapshot test notices if a release changes what it collects.
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return dg.load_definitions_from_modules(
            DEFINITION_MODULES, resources=build_resources(settings), executor=dg.in_process_executor
        )


_settings = load_settings()
defs = build_definitions(_settings)
# Dagster's CLI says its temporary home "will be removed"; say where this project's state really is
# (once per command or code server: run workers, forked per run, stay quiet).
if multiprocessing.parent_process() is None and (notice := temporary_home_notice(_settings)):
    print(notice, file=sys.stderr, flush=True)
