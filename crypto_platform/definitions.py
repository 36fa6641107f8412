"""The one place that assembles the platform's ``dg.Definitions``.

``workspace.yaml`` points ``dagster dev`` here (``crypto_platform.definitions``). Every module in
:data:`DEFINITION_MODULES` contributes whatever it defines at module scope (assets, asset specs,
asset checks, sensors, schedules, jobs); to add yours, import it and add one line to the list.
Resources come from :func:`crypto_platform.resources.build_resources`, built once from the settings.

Loading stays fast and free of side effects: no network connection, no process start, no file
written at import. Connections open only when a run or a sensor tick uses a resource. Bad settings
fail the load with a :class:`~crypto_platform.settings.SettingsError` that names the variable.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import dagster as dg

# define_asset_job returns this type; dagster does not export it at top level.
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from crypto_platform import checks, schedules, sensors
from crypto_platform.assets import alerts, bars, daily, landing_log, raw, warehouse
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


def _module_scoped(kinds: tuple[type, ...]) -> list[Any]:
    """Objects of ``kinds`` at module scope in the listed modules, each once (modules import each other's)."""
    found: dict[int, Any] = {}
    for module in DEFINITION_MODULES:
        for value in vars(module).values():
            if isinstance(value, kinds):
                found.setdefault(id(value), value)
    return list(found.values())


def build_definitions(settings: Settings | None = None) -> dg.Definitions:
    """Definitions for ``settings`` (default: the environment); tests pass their own settings."""
    settings = settings or load_settings()
    return dg.Definitions(
        assets=dg.load_assets_from_modules(DEFINITION_MODULES, include_specs=True),
        asset_checks=dg.load_asset_checks_from_modules(DEFINITION_MODULES),
        sensors=_module_scoped((dg.SensorDefinition,)),
        schedules=_module_scoped((dg.ScheduleDefinition,)),
        jobs=_module_scoped((dg.JobDefinition, UnresolvedAssetJobDefinition)),
        resources=build_resources(settings),
    )


defs = build_definitions()
