"""Massive (Polygon) Flat Files: the S3-compatible bucket of one gzip CSV per UTC day and dataset.

Read with boto3 the way Massive's docs show (a session with the dashboard's S3 keys, a client on the
Flat Files endpoint, SigV4), since it is the library their endpoint is documented and tested with.
What this module adds:

- **Resumable downloads.** A file is fetched into ``<target>.part`` in ranged chunks; a download cut
  short continues from the bytes already on disk (``Range: bytes=N-``) as long as the object's ETag
  is the one the part was started with, so a failed run does not fetch a large file again.
- **Errors that say what to do.** S3 answers 403 for a wrong key, a plan without Flat Files and a
  day not yet published alike; the messages name the setting or the likely cause. 404 (no such
  key) means the day is not published: :meth:`FlatFilesClient.head` returns None.
- **Secrets stay secret.** The keys are held as :class:`~crypto_platform.settings.Secret` and only
  revealed to boto3; botocore's errors do not carry them.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from crypto_platform.settings import Secret

PREFIX = "global_crypto"
TRADES = "trades_v1"
MINUTE_AGGS = "minute_aggs_v1"
DAY_AGGS = "day_aggs_v1"
# Large enough that a day's file is a few requests, small enough that a cut leaves little to redo.
CHUNK_BYTES = 16 * 1024 * 1024
_READ_BYTES = 1024 * 1024


class FlatFilesError(RuntimeError):
    """Flat Files could not be read; the message says why and what to do."""


class FlatFilesAuthError(FlatFilesError):
    """The endpoint refused the S3 keys."""


def object_key(dataset: str, day: date) -> str:
    """``global_crypto/trades_v1/2026/11/2026-11-25.csv.gz``."""
    return f"{PREFIX}/{dataset}/{day:%Y}/{day:%m}/{day.isoformat()}.csv.gz"


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str


@dataclass(frozen=True)
class Progress:
    """Where a download stands: bytes on disk of ``total``, and how many came in this run."""

    key: str
    done: int
    total: int
    fetched: int
    seconds: float


class FlatFilesClient:
    """Lists and downloads Flat Files from ``endpoint``/``bucket`` with the given S3 keys."""

    def __init__(
        self,
        endpoint: str,
        bucket: str,
        access_key_id: Secret,
        secret_access_key: Secret,
        connect_timeout_s: float = 10.0,
        read_timeout_s: float = 120.0,
        retries: int = 5,
        chunk_bytes: int = CHUNK_BYTES,
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.chunk_bytes = chunk_bytes
        self.bucket = bucket
        session = boto3.Session(
            aws_access_key_id=access_key_id.reveal(), aws_secret_access_key=secret_access_key.reveal()
        )
        config = Config(
            signature_version="s3v4",
            connect_timeout=connect_timeout_s,
            read_timeout=read_timeout_s,
            retries={"max_attempts": retries, "mode": "standard"},
        )
        self._s3 = session.client("s3", endpoint_url=self.endpoint, config=config)

    def __repr__(self) -> str:
        return f"FlatFilesClient({self.endpoint!r}, bucket={self.bucket!r})"

    def _fail(self, what: str, exc: Exception) -> FlatFilesError:
        if isinstance(exc, ClientError):
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch"):
                return FlatFilesAuthError(
                    f"{self.endpoint} refused the S3 keys for {what} ({code}): check POLYGON_S3_ACCESS_KEY_ID and "
                    "POLYGON_S3_SECRET_ACCESS_KEY (the Flat Files keys from the Massive dashboard, not the API key)"
                )
            if status == 403 or code in ("AccessDenied", "403", "Forbidden"):
                return FlatFilesAuthError(
                    f"{self.endpoint} answered 403 for {what}: the keys may be wrong (check POLYGON_S3_ACCESS_KEY_ID "
                    "and POLYGON_S3_SECRET_ACCESS_KEY), the plan may not include crypto Flat Files or this day, or the "
                    "file is not published yet (about 11:00 ET the next day); or set CRYPTO_HISTORY_SOURCE=rest to "
                    "read history from REST"
                )
            return FlatFilesError(f"{self.endpoint} rejected {what}: {code or status} {err.get('Message', '')}".strip())
        return FlatFilesError(
            f"{what} failed: {exc}; the Flat Files endpoint {self.endpoint} may be down — try again later"
        )

    def head(self, key: str) -> ObjectInfo | None:
        """The object's size and ETag; None when the bucket has no such key (not published)."""
        try:
            meta = self._s3.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return None
            raise self._fail(f"s3://{self.bucket}/{key}", exc) from None
        except BotoCoreError as exc:
            raise self._fail(f"s3://{self.bucket}/{key}", exc) from None
        return ObjectInfo(key, int(meta["ContentLength"]), str(meta.get("ETag", "")))

    def list_keys(self, prefix: str) -> list[ObjectInfo]:
        """Every object under ``prefix`` (ListObjectsV2, following continuation tokens)."""
        out: list[ObjectInfo] = []
        try:
            for page in self._s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                out.extend(
                    ObjectInfo(o["Key"], int(o["Size"]), str(o.get("ETag", ""))) for o in page.get("Contents", [])
                )
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(f"the listing of s3://{self.bucket}/{prefix}", exc) from None
        return out

    def download(self, info: ObjectInfo, target: Path, progress: Callable[[Progress], None] | None = None) -> Path:
        """Fetch ``info`` to ``target``, continuing a ``<target>.part`` left by an earlier attempt.

        The part's ETag is kept beside it (``<target>.part.json``); a part of another version of the
        object is discarded. ``target`` appears only once complete (rename).
        """
        part = target.with_name(target.name + ".part")
        meta = target.with_name(target.name + ".part.json")
        target.parent.mkdir(parents=True, exist_ok=True)
        done = 0
        if part.exists():
            try:
                same = json.loads(meta.read_text()).get("etag") == info.etag
            except (OSError, ValueError):
                same = False
            done = part.stat().st_size if same and part.stat().st_size <= info.size else 0
            if not done:
                part.unlink()
        meta.write_text(json.dumps({"key": info.key, "etag": info.etag, "size": info.size}))
        started, fetched = time.monotonic(), 0
        with open(part, "ab") as out:
            while done < info.size:
                last = min(info.size, done + self.chunk_bytes) - 1
                what = f"s3://{self.bucket}/{info.key} bytes {done}-{last}"
                try:
                    resp = self._s3.get_object(
                        Bucket=self.bucket, Key=info.key, Range=f"bytes={done}-{last}", IfMatch=info.etag
                    )
                    body = resp["Body"]
                    while chunk := body.read(_READ_BYTES):
                        out.write(chunk)
                        done += len(chunk)
                        fetched += len(chunk)
                except (ClientError, BotoCoreError) as exc:
                    out.flush()
                    raise self._fail(what, exc) from None
                out.flush()
                if progress is not None:
                    progress(Progress(info.key, done, info.size, fetched, time.monotonic() - started))
            os.fsync(out.fileno())
        os.replace(part, target)
        meta.unlink(missing_ok=True)
        return target

    def get_bytes(self, key: str) -> bytes:
        """A small object in one request (listings of a day's aggregates, tests)."""
        try:
            body: Any = self._s3.get_object(Bucket=self.bucket, Key=key)["Body"]
            return bytes(body.read())
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(f"s3://{self.bucket}/{key}", exc) from None
