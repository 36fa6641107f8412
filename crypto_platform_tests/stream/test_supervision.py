"""The supervision both background processes share: the ingester's and the lake writer's lock, heartbeat, stop."""

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from crypto_platform.lake import writer
from crypto_platform.settings import Settings
from crypto_platform.stream import supervision
from crypto_platform_tests.conftest import local_settings

PROCESSES: dict[
    str, tuple[Callable[[Settings], supervision.PidLock], Callable[..., int | None], Callable[..., str]]
] = {
    "ingester": (supervision.IngesterLock, supervision.holder_pid, supervision.stop_ingester),
    "lake writer": (writer.writer_lock, writer.running_pid, writer.stop_writer),
}


@pytest.mark.parametrize("name", PROCESSES)
def test_the_lock_names_its_holder_refuses_a_second_and_a_holder_without_a_pid_is_left_alone(
    tmp_path: Path, name: str
) -> None:
    settings = local_settings(tmp_path)
    make_lock, holder, stop = PROCESSES[name]
    assert holder(settings) is None and stop(settings) == "not running"
    with make_lock(settings) as lock:
        assert holder(settings) == os.getpid()
        with pytest.raises(supervision.AlreadyRunning, match=f"pid {os.getpid()}"):
            make_lock(settings).acquire()
        os.truncate(lock.path, 0)  # as between taking the lock and writing the pid
        assert holder(settings) == 0
        # Never os.kill(0, ...): that would signal this process's whole group.
        assert stop(settings, timeout=1) == "starting (no pid yet); left alone"
    assert holder(settings) is None


def test_a_heartbeat_carries_pid_and_time_and_a_missing_or_torn_one_reads_as_none(tmp_path: Path) -> None:
    settings = local_settings(tmp_path)
    path = writer.heartbeat_path(settings)
    assert writer.read_heartbeat(settings) is None
    supervision.write_heartbeat_file(path, {"watermarks": {"raw_trades": 7}})
    beat = writer.read_heartbeat(settings)
    assert beat is not None and beat["watermarks"] == {"raw_trades": 7} and beat["pid"] == os.getpid()
    assert isinstance(beat["ts_ns"], int) and beat["ts_ns"] > 0
    path.write_bytes(b'{"pid": 1')
    assert writer.read_heartbeat(settings) is None and supervision.read_document(path) is None
