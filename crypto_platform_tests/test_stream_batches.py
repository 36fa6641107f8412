"""Cursor transitions of the stream sensor's batching, one test per transition, and a run's BatchScope."""

import dagster as dg
import pytest

from crypto_platform.stream_batches import (
    CHECK_SEGMENTS_TAG,
    SEGMENTS_TAG,
    BatchScope,
    StreamCursor,
    parse_segment_range,
    plan_batches,
)


def entry(seq: int, days: dict[str, int], status_only_day: str | None = None) -> dict:
    out = {"seq": seq, "days": {d: {"XT": {"events": n, "t_min": 0, "t_max": 0}} for d, n in days.items()}}
    if status_only_day:
        out["days"][status_only_day] = {"status": {"events": 3}}
    return out


def test_no_cursor_no_segments_keeps_position() -> None:
    batches, cursor = plan_batches([], StreamCursor(), "log-a", max_segments=10)
    assert batches == []
    assert cursor == StreamCursor("log-a", 0)


def test_first_segments_make_one_batch_per_day() -> None:
    entries = [entry(1, {"2026-11-24": 5}), entry(2, {"2026-11-24": 1, "2026-11-25": 7}), entry(3, {"2026-11-25": 2})]
    batches, cursor = plan_batches(entries, StreamCursor(), "log-a", max_segments=10)
    assert [(b.day, b.first_seq, b.last_seq, b.events) for b in batches] == [
        ("2026-11-24", 1, 2, 6),
        ("2026-11-25", 2, 3, 9),
    ]
    assert cursor == StreamCursor("log-a", 3)
    assert batches[0].run_key("log-a") == "landing:log-a:2026-11-24:1-2"


def test_cursor_skips_segments_already_handed_over() -> None:
    entries = [entry(1, {"2026-11-25": 5}), entry(2, {"2026-11-25": 1})]
    batches, cursor = plan_batches(entries, StreamCursor("log-a", 1), "log-a", max_segments=10)
    assert [(b.first_seq, b.last_seq) for b in batches] == [(2, 2)]
    assert cursor.seq == 2


def test_nothing_new_after_cursor_skips() -> None:
    entries = [entry(1, {"2026-11-25": 5})]
    batches, cursor = plan_batches(entries, StreamCursor("log-a", 1), "log-a", max_segments=10)
    assert batches == []
    assert cursor == StreamCursor("log-a", 1)


def test_same_cursor_gives_same_run_keys() -> None:
    entries = [entry(1, {"2026-11-25": 5}), entry(2, {"2026-11-25": 1})]
    first, _ = plan_batches(entries, StreamCursor("log-a", 0), "log-a", max_segments=10)
    again, _ = plan_batches(entries, StreamCursor("log-a", 0), "log-a", max_segments=10)
    assert [b.run_key("log-a") for b in first] == [b.run_key("log-a") for b in again]


def test_bounded_work_per_tick_advances_by_what_was_taken() -> None:
    entries = [entry(s, {"2026-11-25": 1}) for s in range(1, 8)]
    batches, cursor = plan_batches(entries, StreamCursor(), "log-a", max_segments=3)
    assert [(b.first_seq, b.last_seq) for b in batches] == [(1, 3)]
    assert cursor.seq == 3
    batches, cursor = plan_batches(entries, cursor, "log-a", max_segments=3)
    assert [(b.first_seq, b.last_seq) for b in batches] == [(4, 6)]


def test_new_landing_log_restarts_from_its_first_segment() -> None:
    entries = [entry(1, {"2026-11-25": 4})]
    batches, cursor = plan_batches(entries, StreamCursor("old-log", 900), "new-log", max_segments=10)
    assert [(b.first_seq, b.last_seq) for b in batches] == [(1, 1)]
    assert cursor == StreamCursor("new-log", 1)


def test_status_only_days_make_no_run_but_advance_the_cursor() -> None:
    entries = [entry(1, {}, status_only_day="2026-11-25")]
    batches, cursor = plan_batches(entries, StreamCursor(), "log-a", max_segments=10)
    assert batches == []
    assert cursor.seq == 1


def test_cursor_round_trips_and_tolerates_garbage() -> None:
    cursor = StreamCursor("log-a", 42)
    assert StreamCursor.decode(cursor.encode()) == cursor
    assert StreamCursor.decode("not json") == StreamCursor()
    assert StreamCursor.decode(None) == StreamCursor()


@pytest.mark.parametrize("bad", ["", "7", "a-b", "9-3", "1-2-3"])
def test_segment_range_tag_rejects_malformed_values(bad: str) -> None:
    with pytest.raises(ValueError, match="segment range"):
        parse_segment_range(bad)


def test_segment_range_tag_parses() -> None:
    assert parse_segment_range("12-40") == (12, 40)


def test_a_run_s_scope_is_its_segment_tag_or_the_whole_day() -> None:
    assert BatchScope.from_tags({SEGMENTS_TAG: "12-40", "other": "x"}) == BatchScope((12, 40), (12, 40))
    assert BatchScope.from_tags({SEGMENTS_TAG: "12-40"}).incremental
    # A round that runs the lake checks: they cover every segment since the last checked round.
    assert BatchScope.from_tags({SEGMENTS_TAG: "12-40", CHECK_SEGMENTS_TAG: "3-40"}).checked == (3, 40)
    for whole_day in ({}, {SEGMENTS_TAG: ""}, {"dagster/backfill": "abc"}):
        assert BatchScope.from_tags(whole_day) == BatchScope(None) and not BatchScope.from_tags(whole_day).incremental
    with pytest.raises(ValueError, match=f"run tag {SEGMENTS_TAG}='9-3'"):
        BatchScope.from_tags({SEGMENTS_TAG: "9-3"})


scopes_seen: list[BatchScope] = []


@dg.asset
def probe(context: dg.AssetExecutionContext) -> None:
    scopes_seen.append(BatchScope.from_context(context))


def test_a_run_s_scope_is_read_from_a_real_dagster_run() -> None:
    scopes_seen.clear()
    with dg.instance_for_test() as instance:
        assert dg.materialize([probe], instance=instance, tags={SEGMENTS_TAG: "3-5"}).success
        assert dg.materialize([probe], instance=instance).success
    assert scopes_seen == [BatchScope((3, 5), (3, 5)), BatchScope(None)]
