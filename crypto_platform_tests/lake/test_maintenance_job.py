"""The lake_maintenance job on a real instance: a closed day compacted and checked, today left to the writer."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from crypto_platform.lake.maintenance import files_per_day
from crypto_platform.lake.tables import DeltaLake, with_date
from crypto_platform.resources.lake import LakeResource
from crypto_platform.resources.stream import build_stream_resource
from crypto_platform.schedules import lake_maintenance
from crypto_platform.settings import load_settings
from crypto_platform_tests.test_lake_tables import trades

CLOSED = "2025-11-24"
CLOSED_MS = 1_763_942_400_000  # 2025-11-24T00:00Z


def test_the_job_compacts_closed_days_runs_their_checks_and_leaves_a_day_that_is_still_open(tmp_path: Path) -> None:
    settings = load_settings({"CRYPTO_STATE_DIR": str(tmp_path / "state")}, cwd=tmp_path)
    lake = LakeResource(root=str(tmp_path / "lake"), lock_dir=str(tmp_path / "locks"), closed_after_s=3600)
    tables = DeltaLake(lake.root)
    for i in range(12):  # twelve appends, as the writer makes them segment by segment
        tables.append("raw_trades", with_date(trades(i * 10, 10, CLOSED_MS + i * 60_000, segment=i + 1), CLOSED))
    # A day that has not ended yet (far in the future) keeps its files whatever maintenance does.
    open_day, open_ms = "2099-01-01", 4_070_908_800_000
    for i in range(3):
        tables.append("raw_trades", with_date(trades(i * 10, 10, open_ms + i * 60_000, segment=i + 1), open_day))
    before = tables.read("raw_trades", CLOSED)

    with dg.instance_for_test() as instance:
        result = lake_maintenance.execute_in_process(
            instance=instance, resources={"lake": lake, "stream": build_stream_resource(settings)}
        )
        assert result.success
        counts = files_per_day(tables.open("raw_trades"))  # type: ignore[arg-type]
        assert counts[CLOSED] == 1 and counts[open_day] == 3
        assert tables.read("raw_trades", CLOSED).equals(before)  # same rows, same order

        (output,) = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
        metadata = output.event_specific_data.metadata  # type: ignore[union-attr]
        assert metadata["days_compacted"].value == 1 and metadata["files_removed"].value == 12
        # The whole-day checks ran on the compacted day and are recorded against raw_trades.
        evaluations = [
            e.event_specific_data for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"
        ]
        names = {ev.check_name for ev in evaluations}  # type: ignore[union-attr]
        assert {"schema", "unique_key", "valid_values", "in_partition_day"} <= names
        assert all(ev.asset_key == dg.AssetKey("raw_trades") for ev in evaluations)  # type: ignore[union-attr]
        assert all(ev.passed for ev in evaluations)  # type: ignore[union-attr]

        # A second pass finds nothing to compact.
        again = lake_maintenance.execute_in_process(
            instance=instance, resources={"lake": lake, "stream": build_stream_resource(settings)}
        )
        assert again.success
        assert not [e for e in again.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"]
