"""The server side of Polygon's crypto WebSocket protocol: what the simulator says and accepts.

A copy of its own, on purpose, not an import of the ingester's ``crypto_platform.polygon.protocol``:
when both ends share one module, a wrong status text or acknowledgement is wrong on both and every
test still passes. Each side is instead checked against frames copied from Polygon's published
material (``crypto_platform_tests/fixtures/polygon``). What Polygon says, as those sources show:

- every server frame is a JSON array of events; status events are ``{"ev":"status","status":…,
  "message":…}``;
- the greeting is ``connected`` / "Connected Successfully"; auth answers ``auth_success`` /
  "authenticated" or ``auth_failed``; each topic of a subscribe or unsubscribe is acknowledged in a
  frame of its own, "subscribed to: XT.BTC-USD" / "unsubscribed to: XT.BTC-USD" (sic);
- subscriptions are ``<CHANNEL>.<PAIR>`` with pairs written ``BTC-USD`` and ``*`` for all; clients
  also send the ``X:`` prefix and spaces after commas, which are accepted.
"""

from __future__ import annotations

from typing import NamedTuple

import orjson

CRYPTO_CHANNELS = ("XT", "XQ", "XA", "XAS", "XL2")

# Close codes the server sends (RFC 6455, as Polygon uses them).
CLOSE_ABNORMAL = 1006  # recorded when a connection ended without a close frame
CLOSE_POLICY_VIOLATION = 1008  # max_connections, slow consumers, refused keys
CLOSE_INTERNAL_ERROR = 1011

STATUS_CONNECTED = "connected"
STATUS_AUTH_SUCCESS = "auth_success"
STATUS_AUTH_FAILED = "auth_failed"
STATUS_AUTH_TIMEOUT = "auth_timeout"
STATUS_AUTH_REQUIRED = "auth_required"
STATUS_SUCCESS = "success"
STATUS_ERROR = "error"

MESSAGES = {
    STATUS_CONNECTED: "Connected Successfully",
    STATUS_AUTH_SUCCESS: "authenticated",
    STATUS_AUTH_FAILED: "authentication failed",
    STATUS_AUTH_TIMEOUT: "No authentication request received.",
    STATUS_AUTH_REQUIRED: "authentication required",
    # The text seen in 2026 logs (the spec's older example reads "Maximum number of connections exceeded.").
    "max_connections": "Maximum number of websocket connections exceeded. You have reached the connection "
    "limit for your account. Please contact support at https://polygon.io/contact to increase your limit.",
    "slow_consumer": "Slow consumer: the client is not reading data fast enough.",
    "force_disconnect": "The server forced a disconnect.",
}


def status_frame(status: str, message: str | None = None) -> str:
    """One status event in a frame of its own: ``[{"ev":"status","status":…,"message":…}]``."""
    text = MESSAGES.get(status, status) if message is None else message
    return orjson.dumps([{"ev": "status", "status": status, "message": text}]).decode()


class Topic(NamedTuple):
    """A subscription ``<channel>.<pair>``; ``pair`` is ``*`` for every pair."""

    channel: str
    pair: str

    def __str__(self) -> str:
        return f"{self.channel}.{self.pair}"


class TopicError(ValueError):
    """A subscription parameter that is not ``CHANNEL.PAIR``."""


def parse_topics(params: str) -> list[Topic]:
    """The comma list of a subscribe/unsubscribe: ``"XT.X:BTC-USD, XA.*"`` -> XT.BTC-USD, XA.*."""
    topics = []
    for raw in params.split(","):
        text = raw.strip()
        if not text:
            continue
        channel, sep, pair = text.partition(".")
        if not sep or not channel or not pair.strip():
            raise TopicError(f"subscription {raw!r} is not CHANNEL.PAIR (e.g. XT.BTC-USD or XA.*)")
        topics.append(Topic(channel.upper(), pair.strip().removeprefix("X:").upper()))
    return topics


def subscribe_ack(topic: Topic, unsubscribe: bool = False) -> str:
    """The acknowledgement of one topic (Polygon writes "unsubscribed to", sic)."""
    verb = "unsubscribed to" if unsubscribe else "subscribed to"
    return status_frame(STATUS_SUCCESS, f"{verb}: {topic}")
