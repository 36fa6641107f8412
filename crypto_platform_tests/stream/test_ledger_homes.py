"""The ledger's one file name, GapWindow, and StreamResource's view of the ledger."""

from __future__ import annotations

from pathlib import Path

from crypto_platform.resources.stream import StreamResource
from crypto_platform.stream.session_ledger import LEDGER_FILE, Gap, GapWindow, SessionLedger, gaps, sessions

T0_NS = 1_764_000_000_000_000_000  # 2025-11-24 16:00:00 UTC


def test_a_gap_window_overlaps_half_open_spans_and_names_itself() -> None:
    w = GapWindow(1_000, 2_000, after_session=3, before_session=4, reason="reset", close_code=1006)
    assert w.overlaps(1_999, 5_000) and w.overlaps(0, 1_001)
    assert not w.overlaps(2_000, 3_000) and not w.overlaps(0, 1_000)
    assert w.label == "stream gap 1970-01-01 00:00:01-1970-01-01 00:00:02 after session 3 (close 1006)"
    assert GapWindow(1_000, 2_000, 3, None, None).label.endswith("after session 3")


def test_a_ledger_gap_placed_on_the_receive_clock_runs_to_now_while_open() -> None:
    closed = Gap(5_000_000_999, 9_000_000_000, after_session=1, before_session=2, close_code=1006, reason="reset")
    assert closed.window(now_ms=99_000) == GapWindow(5_000, 9_000, 1, 2, "reset", 1006)
    still_open = Gap(12_000_000_000, None, after_session=2, before_session=None, close_code=None, reason=None)
    window = still_open.window(now_ms=99_000)
    assert window == GapWindow(12_000, 99_000, 2, None, None, None)
    assert window.label == "stream gap 1970-01-01 00:00:12-1970-01-01 00:01:39 after session 2"


def test_the_stream_resource_reads_the_ledger_it_names_and_its_settings_once(tmp_path: Path) -> None:
    stream = StreamResource(project_dir=str(tmp_path), state_dir=str(tmp_path / "state"), data_dir=str(tmp_path))
    assert stream.ledger_path == tmp_path / "landing" / LEDGER_FILE
    assert stream.sessions() == [] and stream.gaps() == []
    stream.landing_dir.mkdir(parents=True)
    ledger = SessionLedger(stream.ledger_path)
    for n, (first, last) in enumerate([(1, 5), (9, 12)], start=1):
        session = ledger.new_session()
        ledger.record(session, "connect", T0_NS + first * 10**9 - 1)
        ledger.record(session, "first_frame", T0_NS + first * 10**9)
        ledger.record(session, "disconnect", T0_NS + last * 10**9, code=1006, last_frame_ns=T0_NS + last * 10**9)
        assert session == n
    ledger.close()
    assert stream.sessions() == sessions(stream.ledger_path) and len(stream.sessions()) == 2
    assert stream.gaps() == gaps(stream.sessions())
    assert [(g.start_ns, g.end_ns) for g in stream.gaps()] == [
        (T0_NS + 5 * 10**9, T0_NS + 9 * 10**9),
        (T0_NS + 12 * 10**9, None),
    ]
    assert stream.settings() is stream.settings()
