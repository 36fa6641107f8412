"""The ingester: one connection to Polygon's crypto feed, every frame landed before anything else.

Decision: speak the protocol with ``websockets`` directly rather than wrap polygon-api-client's
``WebSocketClient``. The official client stops silently on a 1000/1001 close, counts reconnects over
its lifetime, has no backoff and no handshake timeouts, can lose pending subscriptions, dies on a
malformed frame and hides status frames (all true of 1.16.3); and it parses every event into
a model (~66k events/s here). Reading raw bytes (``recv(decode=False)``) and landing them with one
``write`` each is several times faster. The official client stays the compatibility reference in
the simulator's tests.

Connection behaviour:

- every drop or close (1000/1001 included) is followed by a reconnect after an exponential backoff
  with jitter and a cap, reset once a session has been stable for a while: never a hot loop;
- the greeting, the auth reply and the subscription acks each have a timeout; keepalive pings run;
  frames have no size limit;
- ``auth_failed`` stops retrying (a slow retry much later) with an error naming the setting;
  ``max_connections`` cools down (at least a minute by default): another connection uses the key;
- every session subscribes to the full wanted topic set, so a change is never lost on reconnect;
- status frames and connection events go to the session ledger; malformed frames to quarantine
  (the landing log's sealer takes them out of their segment when it seals it);
- a full disk is a state of its own, not a connection failure: the frame that did not fit is cut
  back out of its segment, the session is closed cleanly with the reason in the ledger (a gap,
  repaired like any other), the heartbeat says "disk full at <path>" with the free space, and the
  ingester looks for room every ``CRYPTO_DISK_FULL_RETRY_S`` and reconnects once there is;
- no traceback: an unexpected error is recorded with its cause in the heartbeat (state ``failed``)
  and the ledger, and the process exits with code 1; the stream sensor starts a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass
from typing import Any

import uvloop
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from crypto_platform.durable import DiskFull, free_bytes, is_disk_full
from crypto_platform.polygon import protocol as p
from crypto_platform.settings import Settings, mask_url_password
from crypto_platform.stream import supervision
from crypto_platform.stream.landing_log import LandingLog, validate
from crypto_platform.stream.manifest import last_manifest_entry
from crypto_platform.stream.session_ledger import SessionLedger, ledger_path, sessions

log = logging.getLogger("crypto_platform.ingester")

_STATUS_MARK = b'"status"'


class AuthRefused(Exception):
    """Polygon answered auth_failed: the key is wrong, expired or not entitled."""


class HandshakeTimeout(Exception):
    """A greeting, auth reply or subscription ack did not come in time."""


class LandingWriteFailed(Exception):
    """Writing a frame to the landing log failed for a reason other than a full disk."""


# Reading resumes after a full disk once the reserve is back and at least this much more is free.
RESUME_FREE_BYTES = 1024 * 1024


@dataclass
class Backoff:
    """Exponential backoff with jitter in [50%, 100%] of the step (never near zero) and a cap."""

    initial_s: float
    max_s: float
    attempt: int = 0

    def next_delay(self) -> float:
        step = min(self.max_s, self.initial_s * (2**self.attempt))
        self.attempt += 1
        return step * random.uniform(0.5, 1.0)

    def reset(self) -> None:
        self.attempt = 0


def wanted_topics(settings: Settings) -> list[str]:
    requested = supervision.requested_topics(settings)
    if requested is not None:
        return requested
    return [str(t) for t in p.topics_for(settings.channels, settings.pairs)]


class Ingester:
    """Runs sessions until ``stop`` is set; the caller holds the single-instance lock."""

    def __init__(self, settings: Settings, keep_fds: tuple[int, ...] = ()) -> None:
        self.settings = settings
        self.url = settings.ws_url
        # The sealer process validates, counts and announces segments beside the reader; it inherits
        # ``keep_fds`` (the single-instance lock), so no new ingester starts before it has finished.
        self.landing = LandingLog(
            settings.landing_dir,
            fsync=settings.fsync_policy,
            max_bytes=settings.segment_max_bytes,
            max_age_s=settings.segment_max_age_s,
            retention_days=settings.retention_days,
            sealer="process",
            pass_fds=keep_fds,
        )
        self.ledger: SessionLedger | None = None
        self.backoff = Backoff(settings.reconnect_initial_s, settings.reconnect_max_s)
        self.topics = wanted_topics(settings)
        self.state = "starting"
        self.session = 0
        self.reconnects = 0
        self.gaps = 0
        self.frames = 0
        self.events = 0
        self.last_error: dict[str, Any] | None = None
        self.reserve = supervision.DiskReserve(settings)
        # "disk full at <path> (<n> free)" while the ingester waits for room, else None.
        self.disk_full: str | None = None
        # An unexpected error: recorded, then the process exits (code 1) for a fresh start.
        self.fatal: BaseException | None = None
        self._ws: ClientConnection | None = None
        self._session_frames = 0
        self._session_events = 0
        self._session_open = False
        self._session_first_data: int | None = None
        self._session_last_frame: int | None = None
        self._cooldown_s: float | None = None
        # Why the next reconnect waits (also the state shown meanwhile): backoff, cooldown or auth_failed.
        self._delay_kind = "backoff"
        self._rate_mark = (time.monotonic(), 0)
        self.events_per_s = 0.0

    # -- landing ----------------------------------------------------------------------------------

    def _land(self, frame: bytes) -> list[dict[str, Any]] | None:
        """Append the frame, count it, and hand status frames to the ledger; return their events.

        Data frames are not parsed here: the landing log's sealer checks and counts them (the manifest
        has the exact figures). A scan over a frame costs about 1 us here, a tenth of what receiving
        and landing it costs, so the reader's scans are the cheap kind: events are counted as the
        frame's JSON objects (``{``, one per event in Polygon's flat events), and the status mark is
        only searched for in frames holding a ``u``, which Polygon's data frames never do (a frame
        with ``"status"`` always has one, so none is missed).
        """
        if self.disk_full is not None:
            # Found full elsewhere (the heartbeat, the ledger): land nothing more, so the reserve just
            # given up holds the records of why, not frames read before the connection closes.
            raise DiskFull(self.settings.landing_dir)
        recv_ns = time.time_ns()
        try:
            self.landing.append(recv_ns, self.session, frame)
        except OSError as exc:  # the disk, not the connection: never reported as a connection failure
            if is_disk_full(exc):
                raise
            raise LandingWriteFailed(f"cannot write the landing log: {_cause(exc)}") from exc
        self.frames += 1
        self._session_frames += 1
        self._session_last_frame = recv_ns
        n = frame.count(b"{")
        self.events += n
        self._session_events += n
        if b"u" in frame and _STATUS_MARK in frame:
            events = validate(frame)[0]  # a malformed one is quarantined by the sealer
            if events:
                self._on_statuses(recv_ns, events)
            return events
        if self._session_first_data is None:
            self._session_first_data = recv_ns
            assert self.ledger is not None
            self.ledger.record(self.session, "first_frame", recv_ns)
        return None

    def _on_statuses(self, recv_ns: int, events: list[dict[str, Any]]) -> None:
        assert self.ledger is not None
        data = False
        for event in events:
            if event.get("ev") != "status":
                data = True
                continue
            status, message = event.get("status"), event.get("message")
            self.ledger.record(self.session, "status", recv_ns, status=status, message=message)
            if status == p.STATUS_MAX_CONNECTIONS:
                self._cooldown_s = self.settings.max_connections_cooldown_s
                self._error(
                    "max_connections",
                    "Polygon refused this connection (max_connections): another connection is using this API "
                    f"key; cooling down {self._cooldown_s:.0f}s before reconnecting",
                )
            elif status in (p.STATUS_SLOW_CONSUMER, p.STATUS_FORCE_DISCONNECT, p.STATUS_AUTH_TIMEOUT, p.STATUS_ERROR):
                self._error(str(status), f"Polygon sent {status}: {message}")
        if data and self._session_first_data is None:
            self._session_first_data = recv_ns
            self.ledger.record(self.session, "first_frame", recv_ns)

    def _error(self, kind: str, message: str) -> None:
        self.last_error = {"kind": kind, "message": message, "ts_ns": time.time_ns()}
        log.warning(message)

    # -- one session ------------------------------------------------------------------------------

    async def _recv_status(self, ws: ClientConnection, wanted: set[str], timeout: float) -> str:
        """Land frames until one carries a status in ``wanted``; return it."""
        async with asyncio.timeout(timeout):
            while True:
                events = self._land(await ws.recv(decode=False))
                for event in events or ():
                    if event.get("ev") == "status" and event.get("status") in wanted:
                        return str(event["status"])

    async def _run_session(self) -> None:
        assert self.ledger is not None
        timeout = self.settings.handshake_timeout_s
        self.state = "connecting"
        async with connect(
            self.url, max_size=None, open_timeout=timeout, close_timeout=2, ping_interval=20, ping_timeout=20
        ) as ws:
            self._ws = ws
            self.state = "handshake"
            try:
                await self._recv_status(ws, {p.STATUS_CONNECTED}, timeout)
            except TimeoutError:
                raise HandshakeTimeout(f"no greeting from {self.url} within {timeout:g}s") from None
            await ws.send(p.action_message("auth", self.settings.api_key.reveal()).decode())
            try:
                status = await self._recv_status(ws, {p.STATUS_AUTH_SUCCESS, p.STATUS_AUTH_FAILED}, timeout)
            except TimeoutError:
                raise HandshakeTimeout(f"no reply to auth within {timeout:g}s") from None
            if status == p.STATUS_AUTH_FAILED:
                raise AuthRefused()
            await self._subscribe(ws, self.topics)
            self.state = "streaming"
            while True:
                self._land(await ws.recv(decode=False))

    async def _subscribe(self, ws: ClientConnection, topics: list[str], unsubscribe: bool = False) -> None:
        """Send one (un)subscribe for ``topics`` and wait until each is acknowledged."""
        assert self.ledger is not None
        if not topics:
            return
        action = "unsubscribe" if unsubscribe else "subscribe"
        await ws.send(p.action_message(action, ",".join(topics)).decode())
        self.ledger.record(self.session, action, time.time_ns(), topics=topics)
        verb = "unsubscribed to: " if unsubscribe else "subscribed to: "
        pending = {str(p.parse_topic(t)) for t in topics}
        timeout = self.settings.handshake_timeout_s
        try:
            async with asyncio.timeout(timeout):
                while pending:
                    for event in self._land(await ws.recv(decode=False)) or ():
                        if event.get("ev") == "status":
                            message = str(event.get("message", ""))
                            if message.startswith(verb):
                                pending.discard(message[len(verb) :].strip())
                            elif event.get("status") == p.STATUS_ERROR:
                                pending = {t for t in pending if t not in message}
        except TimeoutError:
            raise HandshakeTimeout(f"{action} not acknowledged within {timeout:g}s for {sorted(pending)}") from None

    async def _apply_topic_change(self, topics: list[str]) -> None:
        added = sorted(set(topics) - set(self.topics))
        removed = sorted(set(self.topics) - set(topics))
        self.topics = topics  # every later session subscribes to all of these
        ws = self._ws
        if ws is None or self.state != "streaming":
            return
        # Sent from the housekeeping task; acks are recorded by the reader like any status frame.
        assert self.ledger is not None
        if added:
            await ws.send(p.action_message("subscribe", ",".join(added)).decode())
            self.ledger.record(self.session, "subscribe", time.time_ns(), topics=added)
        if removed:
            await ws.send(p.action_message("unsubscribe", ",".join(removed)).decode())
            self.ledger.record(self.session, "unsubscribe", time.time_ns(), topics=removed)

    # -- the loop ---------------------------------------------------------------------------------

    def _close_dangling_session(self) -> None:
        """A session left open by a crash gets its disconnect record from what the landing log holds."""
        assert self.ledger is not None
        all_sessions = sessions(self.ledger.path)
        if not all_sessions or not all_sessions[-1].open:
            return
        last = all_sessions[-1]
        # Its segments are the newest (sessions and segments both go forward in time), so its last
        # frame is in the manifest's last entry, if it landed any.
        newest = last_manifest_entry(self.landing.root)
        last_frame = int(newest["recv_last_ns"]) if newest and last.session in newest["sessions"] else None
        self.ledger.record(
            last.session,
            "disconnect",
            time.time_ns(),
            code=None,
            reason="ingester stopped without closing (crash or kill)",
            last_frame_ns=last_frame,
            frames=None,
            events=None,
        )

    async def run(self, stop: asyncio.Event) -> int:
        """Connect, land, reconnect until ``stop``; return the process exit code (1: an unexpected error)."""
        housekeeping: asyncio.Task[None] | None = None
        try:
            report = self.landing.open()
            if report.torn_bytes or report.sealed_on_open or report.manifest_rebuilt or report.resized:
                log.warning(f"landing log repaired: {report}")
            self.ledger = SessionLedger(ledger_path(self.settings.landing_dir))
            self._close_dangling_session()
            if not self.reserve.take():
                self._enter_disk_full(DiskFull(self.settings.landing_dir))
            housekeeping = asyncio.create_task(self._housekeeping(stop))
            while not stop.is_set() and self.fatal is None:
                if self.disk_full is not None:
                    await self._wait_for_room(stop)
                    continue
                await self._one_session(stop)
                if stop.is_set() or self.fatal is not None or self.disk_full is not None:
                    continue
                delay = self._next_delay()
                self.state = self._delay_kind
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                self.reconnects += 1
        except Exception as exc:
            self.fatal = exc
        finally:
            if housekeeping is not None:
                housekeeping.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await housekeeping
            self._shut_down()
        return 0 if self.fatal is None else 1

    def _shut_down(self) -> None:
        """Record, seal and release; every step is tried, and a failure is recorded, never raised.

        After an unexpected error the ledger and the heartbeat get its cause first, before the
        sealing, which may wait for the sealer process.
        """
        if self.fatal is not None:
            message = f"the ingester stopped on an unexpected {_cause(self.fatal)}"
            self.last_error = {"kind": "internal", "message": message, "ts_ns": time.time_ns()}
            log.error(message)
        self.state = "stopped" if self.fatal is None else "failed"
        steps: list[Any] = []
        if self.ledger is not None and self.fatal is not None and self._session_open:
            steps += [self._record_failure, self._heartbeat]
        steps.append(self.landing.close)
        if self.ledger is not None:
            steps.append(self.ledger.close)
        steps.append(self._heartbeat)
        for step in steps:
            try:
                step()
            except Exception as exc:
                if is_disk_full(exc):
                    self._enter_disk_full(exc)
                    self.state = "stopped" if self.fatal is None else "failed"
                else:
                    self._error("internal", f"while stopping: {_cause(exc)}")

    def _record_failure(self) -> None:
        assert self.ledger is not None and self.fatal is not None
        self._session_open = False
        self.ledger.record(
            self.session,
            "disconnect",
            time.time_ns(),
            code=None,
            reason=f"ingester failed: {_cause(self.fatal)}",
            last_frame_ns=self._session_last_frame,
            frames=self._session_frames,
            events=self._session_events,
        )

    # -- a full disk ------------------------------------------------------------------------------

    def _enter_disk_full(self, exc: BaseException) -> None:
        """Stop reading until there is room; give up the reserve so the records of why still fit."""
        self.reserve.release()
        message = str(exc) if isinstance(exc, DiskFull) else str(DiskFull(self.settings.landing_dir))
        first = self.disk_full is None
        self.disk_full = message
        self.state = "disk_full"
        if first:
            self._error(
                "disk_full",
                f"{message}: stopped reading the feed; retrying every {self.settings.disk_full_retry_s:g}s "
                "and resuming by itself once there is room (free space on that disk)",
            )

    def _has_room(self) -> bool:
        assert self.ledger is not None
        if not self.reserve.take():
            return False
        return free_bytes(self.settings.landing_dir) >= RESUME_FREE_BYTES and self.ledger.flush()

    async def _wait_for_room(self, stop: asyncio.Event) -> None:
        """Look for room at a slow, bounded rate; clear the disk-full state once there is."""
        self.state = "disk_full"
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), self.settings.disk_full_retry_s)
        if stop.is_set():
            return
        if self._has_room():
            log.warning(f"room again on {self.settings.landing_dir} after '{self.disk_full}': reconnecting")
            self.disk_full = None
            self.reconnects += 1
            self.backoff.reset()
        else:
            self.disk_full = str(DiskFull(self.settings.landing_dir))  # the free space, as of now

    def _next_delay(self) -> float:
        if self._delay_kind == "auth_failed":
            return self.settings.auth_retry_s
        if self._cooldown_s is not None:
            delay, self._cooldown_s = self._cooldown_s, None
            self._delay_kind = "cooldown"
            return delay
        return self.backoff.next_delay()

    async def _one_session(self, stop: asyncio.Event) -> None:
        assert self.ledger is not None
        self.session = self.ledger.new_session()
        self._session_frames = self._session_events = 0
        self._session_first_data = self._session_last_frame = None
        self._delay_kind = "backoff"
        started = time.monotonic()
        self.ledger.record(self.session, "connect", time.time_ns(), url=mask_url_password(self.url))
        self._session_open = True
        task = asyncio.create_task(self._run_session())
        stopper = asyncio.create_task(stop.wait())
        code: int | None = None
        reason = ""
        try:
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if not task.done():
                reason = "stopped"
                if self._ws is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(self._ws.close(), 3)
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
                code = 1000
            else:
                exc = task.exception()
                code, reason = self._classify(exc)
        finally:
            stopper.cancel()
            self._ws = None
        if self.fatal is not None:
            return  # recorded with its cause by _shut_down
        stable = self._session_first_data is not None and time.monotonic() - started >= self.settings.reconnect_reset_s
        if stable:
            self.backoff.reset()
        if self._session_first_data is not None and reason != "stopped":
            self.gaps += 1  # data stopped flowing until the next session's first frame
        self._session_open = False
        self.ledger.record(
            self.session,
            "disconnect",
            time.time_ns(),
            code=code,
            reason=reason,
            last_frame_ns=self._session_last_frame,
            frames=self._session_frames,
            events=self._session_events,
        )

    def _classify(self, exc: BaseException | None) -> tuple[int | None, str]:
        if exc is not None and is_disk_full(exc):
            self._enter_disk_full(exc)
        if self.disk_full is not None:  # the landing log or the heartbeat found the disk full
            return None, self.disk_full
        if isinstance(exc, ConnectionClosed):
            frame = exc.rcvd or exc.sent
            code = frame.code if frame else 1006
            reason = frame.reason if frame else "connection dropped without a close frame"
            if self.last_error is None or self.last_error.get("kind") not in ("max_connections",):
                self._error("disconnect", f"disconnected from {self.url}: {code} {reason}".strip())
            return code, reason
        if isinstance(exc, AuthRefused):
            self._delay_kind = "auth_failed"
            self._error(
                "auth_failed",
                f"Polygon refused the API key (auth_failed) at {self.url}: check POLYGON_API_KEY; retrying in "
                f"{self.settings.auth_retry_s:.0f}s",
            )
            return None, "auth_failed"
        if isinstance(exc, HandshakeTimeout):
            self._error("timeout", str(exc))
            return None, str(exc)
        if isinstance(exc, OSError | InvalidHandshake | InvalidURI | TimeoutError):
            message = f"cannot connect to {self.url}: {type(exc).__name__}: {exc}"
            if self.settings.uses_simulator:
                message += " (is the simulator running? `crypto-platform services start`)"
            self._error("connect", message)
            return None, message
        self.fatal = exc if exc is not None else RuntimeError("the session ended without a cause")
        return None, f"ingester failed: {_cause(self.fatal)}"

    # -- housekeeping -----------------------------------------------------------------------------

    async def _housekeeping(self, stop: asyncio.Event) -> None:
        """Seal on age, write the heartbeat, pick up topic changes; a full disk stops the reading."""
        last_beat = 0.0
        while not stop.is_set():
            try:
                try:
                    self.landing.poll()
                except RuntimeError as exc:  # the sealer process died; poll restarts it
                    self._error("sealer", str(exc))
                if self.landing.due():
                    self.landing.seal()
                now = time.monotonic()
                if now - last_beat >= 1.0:
                    last_beat = now
                    requested = supervision.requested_topics(self.settings)
                    if requested is not None and sorted(requested) != sorted(self.topics):
                        await self._apply_topic_change(requested)
                    self._heartbeat()
            except Exception as exc:
                if not is_disk_full(exc):
                    self.fatal = exc  # recorded by _shut_down; the supervisor starts a fresh ingester
                    stop.set()
                    return
                self._enter_disk_full(exc)
                if self._ws is not None:  # stop reading: a clean close, the reason goes to the ledger
                    with contextlib.suppress(Exception):
                        await self._ws.close()
            await asyncio.sleep(0.1)

    def _heartbeat(self) -> None:
        now = time.monotonic()
        mark_t, mark_events = self._rate_mark
        if now - mark_t >= 1.0:
            self.events_per_s = (self.events - mark_events) / (now - mark_t)
            self._rate_mark = (now, self.events)
        by_channel, last_event_ms = self.landing.channel_counts()
        supervision.write_heartbeat(
            self.settings,
            {
                "state": self.state,
                "session": self.session,
                "url": mask_url_password(self.url),
                "topics": self.topics,
                "frames": self.frames,
                "events": self.events,
                "events_per_s": round(self.events_per_s, 1),
                "events_by_channel": dict(sorted(by_channel.items())),
                "last_event_ms": last_event_ms,
                "segments_sealed": self.landing.segments_sealed,
                "quarantined": self.landing.quarantined_total,
                "reconnects": self.reconnects,
                "gaps": self.gaps,
                "last_error": self.last_error,
                "disk_full": self.disk_full,
                "free_bytes": _free_or_none(self.settings.landing_dir),
            },
        )


def _free_or_none(path: Any) -> int | None:
    try:
        return free_bytes(path)
    except OSError:
        return None


def _cause(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def run_foreground(settings: Settings) -> int:
    """``crypto-platform stream``: take the lock, run until SIGTERM/SIGINT, release."""
    import signal

    lock = supervision.IngesterLock(settings)
    lock.acquire()
    try:
        ingester = Ingester(settings, keep_fds=(lock.fileno(),))

        async def main() -> int:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            return await ingester.run(stop)

        # uvloop's C event loop cuts the per-frame cost of the socket reads that dominate the ingester.
        return uvloop.run(main())
    finally:
        lock.release()
