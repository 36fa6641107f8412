"""Shared helpers for the check tests: run checks through a real Dagster instance."""

from __future__ import annotations

from collections.abc import Sequence

import dagster as dg


def evaluations(result: dg.ExecuteInProcessResult) -> dict[tuple[str, str], dg.AssetCheckEvaluation]:
    """(asset, check) -> evaluation of one run."""
    return {(e.asset_key.to_user_string(), e.check_name): e for e in result.get_asset_check_evaluations()}


def run_checks_only(
    instance: dg.DagsterInstance,
    assets: Sequence[dg.AssetsDefinition],
    checks: Sequence[dg.AssetChecksDefinition],
    day: str | None,
    resources: dict[str, object],
) -> dg.ExecuteInProcessResult:
    """Execute just the checks (as "Execute checks" in the UI does) for one partition day."""
    return dg.materialize(
        [*assets, *checks],
        selection=dg.AssetSelection.checks(*checks),
        tags={"dagster/partition": day} if day else None,
        instance=instance,
        resources=resources,
        raise_on_error=False,
    )
