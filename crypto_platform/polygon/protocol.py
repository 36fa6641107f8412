"""Polygon's crypto WebSocket wire protocol: the frames, topics and close codes both ends agree on.

Shared by the simulator (server side) and the ingester (client side) so the two cannot drift.
What both ends rely on, as Polygon documents it: every server frame is a JSON array of events; status
events carry ``ev: "status"``; subscriptions are ``<CHANNEL>.<PAIR>`` with ``*`` for all pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

CRYPTO_CHANNELS = ("XT", "XQ", "XA", "XAS", "XL2")
# Which field holds an event's own time: bar start for aggregates, exchange time otherwise.
EVENT_TIME_FIELD = {"XT": "t", "XQ": "t", "XL2": "t", "XA": "s", "XAS": "s"}

# Close codes seen on the wire (RFC 6455 plus Polygon's use of them).
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_ABNORMAL = 1006  # no close frame: a dropped TCP connection
CLOSE_POLICY_VIOLATION = 1008  # max_connections, slow consumers, refused keys
CLOSE_MESSAGE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011

# Status values (the `status` field of an `ev: "status"` event).
STATUS_CONNECTED = "connected"
STATUS_AUTH_SUCCESS = "auth_success"
STATUS_AUTH_FAILED = "auth_failed"
STATUS_AUTH_TIMEOUT = "auth_timeout"
STATUS_AUTH_REQUIRED = "auth_required"
STATUS_SUCCESS = "success"
STATUS_ERROR = "error"
STATUS_MAX_CONNECTIONS = "max_connections"
STATUS_SLOW_CONSUMER = "slow_consumer"
STATUS_FORCE_DISCONNECT = "force_disconnect"

# The real texts, so clients that match on them behave as against Polygon.
MESSAGES = {
    STATUS_CONNECTED: "Connected Successfully",
    STATUS_AUTH_SUCCESS: "authenticated",
    STATUS_AUTH_FAILED: "authentication failed",
    STATUS_AUTH_TIMEOUT: "No authentication request received.",
    STATUS_AUTH_REQUIRED: "authentication required",
    STATUS_MAX_CONNECTIONS: "Maximum number of websocket connections exceeded. You have reached the connection "
    "limit for your account. Please contact support at https://polygon.io/contact to increase your limit.",
    STATUS_SLOW_CONSUMER: "Slow consumer: the client is not reading data fast enough.",
    STATUS_FORCE_DISCONNECT: "The server forced a disconnect.",
}


def status_frame(status: str, message: str | None = None) -> bytes:
    """One status event in its own frame, e.g. ``[{"ev":"status","status":"connected",...}]``."""
    text = MESSAGES.get(status, status) if message is None else message
    return orjson.dumps([{"ev": "status", "status": status, "message": text}])


def action_message(action: str, params: str) -> bytes:
    """A client message: ``{"action": "auth"|"subscribe"|"unsubscribe", "params": "..."}``."""
    return orjson.dumps({"action": action, "params": params})


@dataclass(frozen=True, order=True)
class Topic:
    """A subscription ``<channel>.<pair>``; ``pair`` is ``*`` for every pair."""

    channel: str
    pair: str

    def __str__(self) -> str:
        return f"{self.channel}.{self.pair}"


class TopicError(ValueError):
    """A subscription parameter that is not ``CHANNEL.PAIR``."""


def parse_topic(raw: str) -> Topic:
    """``"XT.X:BTC-USD"`` -> ``Topic("XT", "BTC-USD")``; spaces trimmed, ``X:`` prefix dropped."""
    text = raw.strip()
    channel, sep, pair = text.partition(".")
    if not sep or not channel or not pair:
        raise TopicError(f"subscription {raw!r} is not CHANNEL.PAIR (e.g. XT.BTC-USD or XA.*)")
    return Topic(channel.upper(), pair.strip().removeprefix("X:").upper())


def parse_topics(params: str) -> list[Topic]:
    """A comma list of topics (the ``params`` of subscribe/unsubscribe)."""
    return [parse_topic(p) for p in params.split(",") if p.strip()]


def topics_for(channels: tuple[str, ...] | list[str], pairs: tuple[str, ...] | list[str]) -> list[Topic]:
    """Every channel x pair topic; a ``*`` pair subscribes the channel to all pairs."""
    if "*" in pairs:
        return [Topic(c, "*") for c in channels]
    return [Topic(c, p) for c in channels for p in pairs]


def subscribe_ack(topic: Topic, unsubscribe: bool = False) -> bytes:
    """The per-topic acknowledgement (Polygon writes "unsubscribed to", sic)."""
    verb = "unsubscribed to" if unsubscribe else "subscribed to"
    return status_frame(STATUS_SUCCESS, f"{verb}: {topic}")
