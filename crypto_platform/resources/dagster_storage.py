"""Dagster's own storage as a resource: how long micro-batch runs are kept, from the settings.

The retention pass itself is :func:`crypto_platform.run_retention.prune_stream_runs`; this resource
only carries the window and the work bounds, so that the environment reaches the job the same way
as every other setting (settings -> resources, in one place).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import dagster as dg

from crypto_platform.run_retention import RetentionReport, prune_stream_runs
from crypto_platform.settings import Settings


class DagsterStorageResource(dg.ConfigurableResource):
    """Keeps Dagster's run history bounded: stream_batch runs older than ``run_retention_days`` go."""

    run_retention_days: int  # 0 keeps every run
    batch_size: int = 200  # runs read and deleted per page
    max_runs_per_pass: int = 50_000  # about three days of runs at a 5 s cadence; the rest waits a day

    def prune(
        self,
        instance: dg.DagsterInstance,
        older_than_days: float | None = None,
        log: Callable[[str], None] = print,
    ) -> RetentionReport | None:
        """Prune runs older than ``older_than_days`` (default: the setting); None when retention is off."""
        days = self.run_retention_days if older_than_days is None else older_than_days
        if older_than_days is None and days == 0:
            return None
        cutoff = datetime.now(UTC) - timedelta(days=days)
        return prune_stream_runs(instance, cutoff, batch_size=self.batch_size, max_runs=self.max_runs_per_pass, log=log)


def build_dagster_storage_resource(settings: Settings) -> DagsterStorageResource:
    return DagsterStorageResource(run_retention_days=settings.run_retention_days)
