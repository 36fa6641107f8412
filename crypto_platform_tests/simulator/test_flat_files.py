"""The simulator's Flat Files over its S3 endpoint, read the way Massive's docs show (boto3, SigV4).

One simulated day is published and checked against the simulator's other faces: its stream (the
same trades, key for key and value for value), its REST trades, minute bars and grouped daily bars.
"""

from __future__ import annotations

import asyncio
import csv
import gzip
import io
import json
import time
from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from polygon import RESTClient

from crypto_platform.settings import SIMULATOR_S3_ACCESS_KEY_ID, SIMULATOR_S3_SECRET_ACCESS_KEY
from crypto_platform.simulator.flat_files import AGGS_HEADER, TRADES_HEADER, object_key
from crypto_platform.simulator.server import Simulator, SimulatorConfig
from crypto_platform_tests.simulator.conftest import KEY, RawClient, wait_for

DAY = date(2025, 11, 20)
DAY_END_MS = 1_763_683_200_000  # 2025-11-21T00:00:00Z
START_MS = DAY_END_MS - 120_000  # the stream covers the day's last two minutes
SPEED = 10.0


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    cfg = SimulatorConfig(
        rate=4, pairs=("BTC-USD",), speed=SPEED, start_ms=START_MS, s3_port=0, history_start=date(2025, 11, 19)
    )
    with Simulator(cfg).running_in_thread() as simulator:
        yield simulator


def s3_client(sim: Simulator, key_id: str = SIMULATOR_S3_ACCESS_KEY_ID, secret: str = SIMULATOR_S3_SECRET_ACCESS_KEY):
    """Exactly as Massive's Flat Files docs show, with the simulator's endpoint."""
    session = boto3.Session(aws_access_key_id=key_id, aws_secret_access_key=secret)
    return session.client("s3", endpoint_url=sim.s3_url, config=Config(signature_version="s3v4"))


def wait_published(sim: Simulator) -> None:
    deadline = time.monotonic() + 60
    while sim.now_ms() < DAY_END_MS + 3_000:  # + the last minute's late trade and bar correction
        assert time.monotonic() < deadline, "the simulated day never ended"
        time.sleep(0.05)


def rows(body: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(gzip.decompress(body).decode())))


async def test_flat_file_trades_equal_the_streamed_trades(sim: Simulator) -> None:
    client = await RawClient.open(sim)
    # The stream carries what happens after the connection: compare from the next whole second on.
    lo = (sim.now_ms() // 1000 + 1) * 1000
    assert lo < DAY_END_MS - 60_000, "the stream must see a good part of the day's end"
    try:
        await client.login("XT.BTC-USD")
        await wait_for(lambda: sim.now_ms() >= DAY_END_MS + 3_000, timeout=60, what="the day's end")
    finally:
        await client.close()
    streamed = {(e["pair"], e["x"], e["i"]): e for e in client.events("XT") if lo <= e["t"] < DAY_END_MS}
    assert len(streamed) > 20, "the stream should carry the day's last two minutes of trades"

    s3 = s3_client(sim)
    body = await asyncio.to_thread(
        lambda: s3.get_object(Bucket="flatfiles", Key=object_key("trades_v1", DAY))["Body"].read()
    )
    text = gzip.decompress(body).decode()
    assert text.split("\n", 1)[0] == TRADES_HEADER
    published = {}
    for r in csv.DictReader(io.StringIO(text)):
        t_ns = int(r["participant_timestamp"])
        if lo * 1_000_000 <= t_ns < DAY_END_MS * 1_000_000:
            published[(r["ticker"].removeprefix("X:"), int(r["exchange"]), r["id"])] = r
    assert published.keys() == streamed.keys()
    # The stream's raw JSON text, so the decimals are compared as sent.
    raw_text = "".join(client.texts)
    for key, r in published.items():
        e = streamed[key]
        assert int(r["participant_timestamp"]) == e["t"] * 1_000_000
        assert [int(r["conditions"])] == e["c"]
        assert f'"i":"{key[2]}","x":{key[1]}' in raw_text
        assert f'"p":{r["price"]},"t":{e["t"]},"s":{r["size"]}' in raw_text, "the same exact decimal text"


def test_boto3_lists_downloads_and_reads_like_massive(sim: Simulator, tmp_path: Path) -> None:
    wait_published(sim)
    s3 = s3_client(sim)
    listed = s3.list_objects_v2(Bucket="flatfiles", Prefix="global_crypto/trades_v1/2025/11/")
    keys = [o["Key"] for o in listed["Contents"]]
    assert keys == [object_key("trades_v1", date(2025, 11, 19)), object_key("trades_v1", DAY)]
    assert all(o["Size"] > 100 for o in listed["Contents"])
    top = s3.list_objects_v2(Bucket="flatfiles", Prefix="global_crypto/", Delimiter="/")
    assert [p["Prefix"] for p in top["CommonPrefixes"]] == [
        "global_crypto/day_aggs_v1/",
        "global_crypto/minute_aggs_v1/",
        "global_crypto/trades_v1/",
    ]
    # Paging through continuation tokens, as the paginator does.
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket="flatfiles", Prefix="global_crypto/", MaxKeys=2)
    assert [o["Key"] for page in pages for o in page.get("Contents", [])] == sorted(
        object_key(ds, d) for ds in ("trades_v1", "minute_aggs_v1", "day_aggs_v1") for d in (date(2025, 11, 19), DAY)
    )

    target = tmp_path / "trades.csv.gz"
    s3.download_file("flatfiles", object_key("trades_v1", DAY), str(target))
    body = s3.get_object(Bucket="flatfiles", Key=object_key("trades_v1", DAY))["Body"].read()
    assert target.read_bytes() == body
    head = s3.head_object(Bucket="flatfiles", Key=object_key("trades_v1", DAY))
    assert head["ContentLength"] == len(body)
    part = s3.get_object(Bucket="flatfiles", Key=object_key("trades_v1", DAY), Range="bytes=10-19")["Body"].read()
    assert part == body[10:20]

    # The same trades as REST /v3/trades, in the same order, with the same exact numbers.
    rest = RESTClient(api_key=KEY, base=sim.rest_url)
    lo_ns, hi_ns = (DAY_END_MS - 86_400_000) * 1_000_000, DAY_END_MS * 1_000_000
    from_rest = [
        (t.exchange, t.id, t.participant_timestamp, t.conditions)
        for t in rest.list_trades("X:BTC-USD", timestamp_gte=lo_ns, timestamp_lt=hi_ns, order="asc", limit=50_000)
    ]
    trades = rows(body)
    assert [(int(r["exchange"]), r["id"], int(r["participant_timestamp"]), [int(r["conditions"])]) for r in trades] == (
        from_rest
    )
    raw = rest.list_trades(
        "X:BTC-USD", timestamp_gte=lo_ns, timestamp_lt=lo_ns + 3_600_000_000_000, order="asc", limit=50_000, raw=True
    )
    first_hour = json.loads(raw.data, parse_float=Decimal)["results"]
    for r, j in zip(trades, first_hour, strict=False):
        assert Decimal(r["price"]) == j["price"] and Decimal(r["size"]) == j["size"]

    # Minute and day aggregates equal REST's minute bars and grouped daily bars.
    minutes = rows(s3.get_object(Bucket="flatfiles", Key=object_key("minute_aggs_v1", DAY))["Body"].read())
    assert (
        gzip.decompress(s3.get_object(Bucket="flatfiles", Key=object_key("minute_aggs_v1", DAY))["Body"].read())
        .decode()
        .startswith(AGGS_HEADER + "\n")
    )
    bars = list(rest.list_aggs("X:BTCUSD", 1, "minute", DAY.isoformat(), DAY.isoformat(), limit=50_000))
    assert len(minutes) == len(bars) > 1000
    for r, b in zip(minutes, bars, strict=True):
        assert int(r["window_start"]) == b.timestamp * 1_000_000
        assert (float(r["open"]), float(r["high"]), float(r["low"]), float(r["close"])) == (
            b.open,
            b.high,
            b.low,
            b.close,
        )
        assert float(r["volume"]) == b.volume and int(r["transactions"]) == b.transactions
    assert sum(int(r["transactions"]) for r in minutes) == len(trades)
    (daily,) = rows(s3.get_object(Bucket="flatfiles", Key=object_key("day_aggs_v1", DAY))["Body"].read())
    grouped = {g.ticker: g for g in rest.get_grouped_daily_aggs(DAY.isoformat(), locale="global", market_type="crypto")}
    g = grouped["X:BTCUSD"]
    assert (float(daily["open"]), float(daily["close"]), int(daily["transactions"])) == (
        g.open,
        g.close,
        g.transactions,
    )
    assert daily["ticker"] == "X:BTC-USD" and int(daily["window_start"]) == lo_ns


def test_wrong_keys_and_missing_days_get_s3_refusals(sim: Simulator) -> None:
    key = object_key("trades_v1", date(2025, 11, 19))
    with pytest.raises(ClientError) as info:
        s3_client(sim, secret="not-the-secret").get_object(Bucket="flatfiles", Key=key)
    assert info.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    with pytest.raises(ClientError) as info:
        s3_client(sim, key_id="AKIAUNKNOWN").list_objects_v2(Bucket="flatfiles")
    assert info.value.response["Error"]["Code"] == "InvalidAccessKeyId"
    with pytest.raises(ClientError) as info:
        s3_client(sim, key_id="AKIAUNKNOWN").head_object(Bucket="flatfiles", Key=key)
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    with pytest.raises(ClientError) as info:  # before the first published day
        s3_client(sim).get_object(Bucket="flatfiles", Key=object_key("trades_v1", date(2025, 11, 18)))
    assert info.value.response["Error"]["Code"] == "NoSuchKey"
    with pytest.raises(ClientError) as info:
        s3_client(sim).list_objects_v2(Bucket="another-bucket")
    assert info.value.response["Error"]["Code"] == "NoSuchBucket"
    assert sim.s3 is not None and sim.s3.counters.refused >= 5
