"""Polygon REST, through the official client, with the three things it lacks for a data platform.

``polygon-api-client`` 1.16.3 is the reference peer, so we use it rather than hand-rolling HTTP.
It needs three corrections:

- **Timeouts.** It builds a ``urllib3.Timeout`` and never uses it (issue #983), so a hung server
  hangs the caller forever. We put the timeout into the pool manager's ``connection_pool_kw``,
  which every connection pool it creates afterwards inherits.
- **Throttling.** Its retry policy honours ``Retry-After`` but backs off 0.1 s, 0.2 s, ... and
  sleeps as long as any ``Retry-After`` says. Bulk backfills need longer backoff and a cap, so we
  install our own ``Retry`` the same way.
- **Exact numbers.** Its models carry floats. ``custom_json`` is the public hook for the decoder,
  so we decode every number with ``parse_float=Decimal`` and models carry exact ``Decimal`` values.

Errors are turned into :class:`PolygonRestError` subclasses whose messages name the cause and the
fix, and never contain the key.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import urllib3
from polygon import RESTClient
from polygon.exceptions import BadResponse
from urllib3.exceptions import MaxRetryError
from urllib3.util.retry import Retry

from crypto_platform.days import MINUTE_MS

# Polygon answers every throttled or overloaded request with one of these.
RETRY_STATUSES = frozenset({413, 429, 499, 500, 502, 503, 504})
# The most base aggregates /v2/aggs returns for one request (its limit caps at 50,000); longer ranges are chunked.
MAX_AGGS_PER_REQUEST = 50_000

_DECIMAL_JSON = SimpleNamespace(
    loads=lambda text: json.loads(text, parse_float=Decimal),
    dumps=json.dumps,
)


class PolygonRestError(RuntimeError):
    """A REST call failed; the message says why and what to do."""


class PolygonAuthError(PolygonRestError):
    """The server refused the API key."""


class PolygonUnavailableError(PolygonRestError):
    """The server did not answer usefully within the timeouts and retries."""


def _capped_retry(total: int, backoff_factor: float, max_retry_after_s: float) -> Retry:
    """A urllib3 ``Retry`` that honours ``Retry-After`` up to a cap (a hostile header cannot stall us)."""

    class CappedRetry(Retry):
        def get_retry_after(self, response: Any) -> float | None:
            value = super().get_retry_after(response)
            return None if value is None else min(value, max_retry_after_s)

    return CappedRetry(
        total=total,
        status_forcelist=sorted(RETRY_STATUSES),
        backoff_factor=backoff_factor,
        backoff_max=max_retry_after_s,
        respect_retry_after_header=True,
        allowed_methods=frozenset({"GET"}),
        raise_on_status=True,
    )


@dataclass(frozen=True)
class RestPolicy:
    """How patient a REST call is: per-request timeouts, retries, and the Retry-After cap."""

    connect_timeout_s: float = 5.0
    read_timeout_s: float = 30.0
    retries: int = 5
    backoff_factor: float = 0.5
    max_retry_after_s: float = 60.0


@dataclass(frozen=True)
class TradePage:
    """One page of ``/v3/trades``: its trades (exact decimals) and the URL of the next page (None: last)."""

    results: list[dict[str, Any]]
    next_url: str | None


def ticker_for(pair: str) -> str:
    """``BTC-USD`` -> ``X:BTCUSD``, the form of the aggregates endpoints."""
    return "X:" + pair.replace("-", "")


class PolygonRest:
    """The REST calls the platform makes, exact and bounded in time."""

    def __init__(self, base_url: str, api_key: str, policy: RestPolicy | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.policy = policy or RestPolicy()
        self._client = RESTClient(
            api_key=api_key,
            base=self.base_url,
            retries=self.policy.retries,
            connect_timeout=self.policy.connect_timeout_s,
            read_timeout=self.policy.read_timeout_s,
            custom_json=_DECIMAL_JSON,
        )
        pool_kw = self._client.client.connection_pool_kw
        pool_kw["timeout"] = urllib3.Timeout(connect=self.policy.connect_timeout_s, read=self.policy.read_timeout_s)
        pool_kw["retries"] = _capped_retry(
            self.policy.retries, self.policy.backoff_factor, self.policy.max_retry_after_s
        )

    def _fail(self, what: str, exc: Exception) -> PolygonRestError:
        if isinstance(exc, BadResponse):
            body = str(exc)
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = {}
            message = parsed.get("error") or parsed.get("message") or body[:200]
            if "api key" in str(message).lower() or parsed.get("status") == "AUTH_ERROR":
                return PolygonAuthError(
                    f"{self.base_url} refused the API key for {what} ({message}): check POLYGON_API_KEY"
                )
            return PolygonRestError(f"{self.base_url} rejected {what}: {message}")
        if isinstance(exc, MaxRetryError):
            return PolygonUnavailableError(
                f"{self.base_url} did not answer {what} after {self.policy.retries} retries "
                f"(last problem: {exc.reason}); it may be throttling (429) or down — try again later, or raise "
                "the REST timeouts/retries"
            )
        return PolygonRestError(f"{what} failed: {exc}")

    def daily_open_close(self, pair: str, day: date) -> dict[str, Any] | None:
        """``/v1/open-close/crypto/{from}/{to}/{date}``; ``None`` when Polygon has no data for the day."""
        base, quote = pair.split("-", 1)
        what = f"open/close of {pair} on {day.isoformat()}"
        try:
            resp = self._client.get_daily_open_close_agg(f"crypto/{base}/{quote}", day.isoformat(), raw=True)
        except BadResponse as exc:
            if '"NOT_FOUND"' in str(exc) or "not found" in str(exc).lower():
                return None
            raise self._fail(what, exc) from None
        except MaxRetryError as exc:
            raise self._fail(what, exc) from None
        return _DECIMAL_JSON.loads(resp.data.decode("utf-8"))

    def minute_aggs(self, pair: str, start_ms: int, end_ms: int) -> Iterator[Any]:
        """Polygon's minute bars for ``[start_ms, end_ms)``, following ``next_url`` pages.

        Windows longer than the 50k-aggregate limit are split into chunks so no request is truncated.
        """
        chunk_ms = MAX_AGGS_PER_REQUEST * MINUTE_MS
        lo = start_ms
        while lo < end_ms:
            hi = min(end_ms, lo + chunk_ms)
            what = f"minute bars of {pair} [{lo}, {hi})"
            try:
                for agg in self._client.list_aggs(
                    ticker_for(pair), 1, "minute", lo, hi - 1, sort="asc", limit=MAX_AGGS_PER_REQUEST
                ):
                    if lo <= agg.timestamp < hi:
                        yield agg
            except (BadResponse, MaxRetryError) as exc:
                raise self._fail(what, exc) from None
            lo = hi

    def trades(self, pair: str, start_ns: int, end_ns: int) -> Iterator[Any]:
        """Trades with ``start_ns <= participant_timestamp < end_ns``, following ``next_url`` pages."""
        what = f"trades of {pair} [{start_ns}, {end_ns})"
        try:
            yield from self._client.list_trades(
                f"X:{pair}", timestamp_gte=start_ns, timestamp_lt=end_ns, sort="timestamp", order="asc", limit=50_000
            )
        except (BadResponse, MaxRetryError) as exc:
            raise self._fail(what, exc) from None

    def trade_pages(
        self, pair: str, start_ns: int, end_ns: int, resume_url: str | None = None, limit: int = 50_000
    ) -> Iterator[TradePage]:
        """``/v3/trades`` of one pair, page by page (up to 50,000 trades each), oldest first.

        Each page carries the ``next_url`` that continues after it, so a caller that keeps it can
        resume a long download from its last completed page (``resume_url``). The next URL is
        followed by its path and query on this client's base, as the official client does.
        """
        what = f"trades of {pair} [{start_ns}, {end_ns})"
        params: dict[str, Any] | None
        if resume_url:
            path, params = _path_and_query(resume_url), None
        else:
            path = f"/v3/trades/X:{pair}"
            params = {
                "timestamp.gte": start_ns,
                "timestamp.lt": end_ns,
                "order": "asc",
                "sort": "timestamp",
                "limit": limit,
            }
        while True:
            try:
                resp = self._client._get(path, params=params, raw=True)
            except (BadResponse, MaxRetryError) as exc:
                raise self._fail(what, exc) from None
            body = _DECIMAL_JSON.loads(resp.data.decode("utf-8"))
            next_url = body.get("next_url") or None
            yield TradePage(list(body.get("results") or []), next_url)
            if next_url is None:
                return
            path, params = _path_and_query(next_url), None


def _path_and_query(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}" if parts.query else parts.path
