"""The simulator's Flat Files endpoint: the S3 subset that Massive's Flat Files are read with.

Its own port, not a path under the WebSocket port: S3 clients send HEAD (``download_file`` asks
for the size first) and ranged GETs, and address the bucket at the root of the endpoint URL, while
the WebSocket server's HTTP hook answers only bodiless GETs with a body built in memory. Here the
standard library's threading HTTP server streams files from disk, so parallel ranged downloads work.

What it speaks: ``ListObjectsV2`` (prefix, delimiter, max-keys, continuation token, start-after),
``GetObject`` (with ``Range``), ``HeadObject``, ``HeadBucket``, path-style and virtual-hosted
addressing, and S3's XML errors. Every request must carry an AWS Signature V4 ``Authorization``
header; the signature is recomputed here with botocore's own signer from the request as received
and the secret of the access key it names, so a wrong key id gets 403 ``InvalidAccessKeyId`` and a
wrong secret 403 ``SignatureDoesNotMatch``, as from S3.
"""

from __future__ import annotations

import base64
import hmac
import itertools
import re
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from email.utils import format_datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit
from xml.sax.saxutils import escape

from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from crypto_platform.simulator.flat_files import BUCKET, FlatFiles, StoredObject

_AUTH = re.compile(
    r"AWS4-HMAC-SHA256\s+Credential=(?P<key>[^/,\s]+)/(?P<date>\d{8})/(?P<region>[^/]+)/(?P<service>[^/]+)/"
    r"aws4_request,\s*SignedHeaders=(?P<signed>[^,\s]+),\s*Signature=(?P<signature>[0-9a-f]{64})"
)
_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")
_NS = "http://s3.amazonaws.com/doc/2006-03-01/"


class S3Error(Exception):
    def __init__(self, status: int, code: str, message: str, **extra: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra


@dataclass
class S3Counters:
    """What the endpoint answered, for tests and benchmarks."""

    requests: dict[str, int] = field(default_factory=dict)
    bytes_sent: int = 0
    refused: int = 0

    def count(self, operation: str) -> None:
        self.requests[operation] = self.requests.get(operation, 0) + 1


class FlatFilesEndpoint:
    """Serves ``files`` as the bucket ``flatfiles`` to clients holding one of ``keys`` (id -> secret)."""

    def __init__(self, files: FlatFiles, keys: Mapping[str, str], host: str = "127.0.0.1", port: int = 0) -> None:
        self.files = files
        self.keys = dict(keys)
        self.counters = S3Counters()
        self._lock = threading.Lock()
        self._request_ids = itertools.count(1)
        endpoint = self

        class Handler(_Handler):
            server_endpoint = endpoint

        self._host = host
        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.serve_forever, name="flat-files-s3", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(10)

    def request_id(self) -> str:
        with self._lock:
            return f"SIM{next(self._request_ids):013d}"

    # -- authentication ---------------------------------------------------------------------------

    def authenticate(self, method: str, target: str, headers: Mapping[str, str]) -> None:
        """Recompute the request's SigV4 signature; raise S3's refusal when it does not match."""
        auth = headers.get("authorization", "")
        if not auth:
            if "X-Amz-Signature" in target:
                raise S3Error(403, "AccessDenied", "Presigned URLs are not supported by the simulator: sign requests")
            raise S3Error(403, "AccessDenied", "Access Denied: anonymous access is not allowed, sign the request")
        m = _AUTH.match(auth)
        if m is None:
            raise S3Error(400, "AuthorizationHeaderMalformed", "The authorization header is malformed; use SigV4")
        key_id = m["key"]
        secret = self.keys.get(key_id)
        if secret is None:
            raise S3Error(
                403,
                "InvalidAccessKeyId",
                "The AWS Access Key Id you provided does not exist in our records.",
                AWSAccessKeyId=key_id,
            )
        amz_date = headers.get("x-amz-date", "")
        if not amz_date.startswith(m["date"]):
            raise S3Error(403, "SignatureDoesNotMatch", "X-Amz-Date does not match the credential scope date")
        signed = m["signature"]
        names = m["signed"].split(";")
        missing = [n for n in names if n not in headers]
        if missing:
            raise S3Error(403, "SignatureDoesNotMatch", f"signed headers missing from the request: {missing}")
        request = AWSRequest(
            method=method, url=f"http://{headers['host']}{target}", headers={n: headers[n] for n in names}
        )
        request.context["timestamp"] = amz_date
        signer = S3SigV4Auth(Credentials(key_id, secret), m["service"], m["region"])
        canonical = signer.canonical_request(request)
        expected = signer.signature(signer.string_to_sign(request, canonical), request)
        if not hmac.compare_digest(expected, signed):
            raise S3Error(
                403,
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided. "
                "Check your key and signing method.",
                AWSAccessKeyId=key_id,
            )

    # -- listing ----------------------------------------------------------------------------------

    def list_objects_v2(self, query: dict[str, str]) -> bytes:
        prefix = query.get("prefix", "")
        delimiter = query.get("delimiter", "")
        try:
            max_keys = min(1000, int(query.get("max-keys", "1000")))
        except ValueError:
            raise S3Error(400, "InvalidArgument", "max-keys must be a whole number") from None
        token = query.get("continuation-token")
        after = query.get("start-after", "")
        if token:
            try:
                after = max(after, base64.urlsafe_b64decode(token.encode()).decode())
            except ValueError:
                raise S3Error(400, "InvalidArgument", "The continuation token provided is incorrect") from None
        url_encoded = query.get("encoding-type") == "url"

        def enc(text: str) -> str:
            return escape(quote(text, safe="/") if url_encoded else text)

        contents: list[StoredObject] = []
        prefixes: list[str] = []
        last = ""
        truncated = False
        for key, is_prefix in self._entries(prefix, delimiter, after):
            if len(contents) + len(prefixes) >= max_keys:
                truncated = True
                break
            last = key
            if is_prefix:
                prefixes.append(key)
            else:
                stored = self.files.get(key)
                if stored is not None:
                    contents.append(stored)
        parts = [
            f'<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult xmlns="{_NS}">',
            f"<Name>{BUCKET}</Name><Prefix>{enc(prefix)}</Prefix><KeyCount>{len(contents) + len(prefixes)}</KeyCount>",
            f"<MaxKeys>{max_keys}</MaxKeys><IsTruncated>{'true' if truncated else 'false'}</IsTruncated>",
        ]
        if delimiter:
            parts.append(f"<Delimiter>{enc(delimiter)}</Delimiter>")
        if url_encoded:
            parts.append("<EncodingType>url</EncodingType>")
        if token:
            parts.append(f"<ContinuationToken>{escape(token)}</ContinuationToken>")
        if query.get("start-after"):
            parts.append(f"<StartAfter>{enc(query['start-after'])}</StartAfter>")
        if truncated:
            parts.append(
                f"<NextContinuationToken>{base64.urlsafe_b64encode(last.encode()).decode()}</NextContinuationToken>"
            )
        for obj in contents:
            modified = obj.last_modified.strftime("%Y-%m-%dT%H:%M:%S.000Z")
            parts.append(
                f"<Contents><Key>{enc(obj.key)}</Key><LastModified>{modified}</LastModified>"
                f"<ETag>{escape(obj.etag)}</ETag><Size>{obj.size}</Size><StorageClass>STANDARD</StorageClass></Contents>"
            )
        parts.extend(f"<CommonPrefixes><Prefix>{enc(p)}</Prefix></CommonPrefixes>" for p in prefixes)
        parts.append("</ListBucketResult>")
        return "".join(parts).encode()

    def _entries(self, prefix: str, delimiter: str, after: str) -> Iterator[tuple[str, bool]]:
        """(key or common prefix rolled up at ``delimiter``, is it a prefix) after ``after``, in order."""
        seen: set[str] = set()
        for key in self.files.keys(prefix):
            entry, is_prefix = key, False
            cut = key.find(delimiter, len(prefix)) if delimiter else -1
            if cut >= 0:
                entry, is_prefix = key[: cut + len(delimiter)], True
            if entry in seen or entry <= after:
                continue
            seen.add(entry)
            yield entry, is_prefix


class _Handler(BaseHTTPRequestHandler):
    server_endpoint: FlatFilesEndpoint
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the simulator's counters say what was served."""

    def do_GET(self) -> None:
        self._serve(head=False)

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def _serve(self, head: bool) -> None:
        ep = self.server_endpoint
        request_id = ep.request_id()
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            ep.authenticate(self.command, self.path, headers)
            bucket, key, query = self._address(headers.get("host", ""))
            if bucket is None:
                raise S3Error(400, "InvalidRequest", "Name the bucket: the simulator serves only 'flatfiles'")
            if bucket != BUCKET:
                raise S3Error(404, "NoSuchBucket", "The specified bucket does not exist", BucketName=bucket)
            if not key:
                if head:
                    ep.counters.count("HeadBucket")
                    self._reply(200, b"", request_id, head=True)
                    return
                if query.get("list-type") != "2":
                    raise S3Error(501, "NotImplemented", "Only ListObjectsV2 (list-type=2) is implemented")
                ep.counters.count("ListObjectsV2")
                self._reply(200, ep.list_objects_v2(query), request_id, content_type="application/xml")
                return
            stored = ep.files.get(key)
            if stored is None:
                raise S3Error(404, "NoSuchKey", "The specified key does not exist.", Key=key)
            match = headers.get("if-match")
            if match is not None and match.strip() not in (stored.etag, "*"):
                raise S3Error(
                    412, "PreconditionFailed", "At least one of the pre-conditions you specified did not hold"
                )
            refusal = ep.files.refusal(head)
            if refusal:
                raise S3Error(403, "AccessDenied", refusal)
            ep.counters.count("HeadObject" if head else "GetObject")
            self._send_object(stored, headers.get("range"), request_id, head)
        except S3Error as exc:
            ep.counters.refused += 1
            body = b""
            if not head:
                extra = "".join(f"<{k}>{escape(v)}</{k}>" for k, v in exc.extra.items())
                body = (
                    f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{exc.code}</Code>'
                    f"<Message>{escape(exc.message)}</Message>{extra}<RequestId>{request_id}</RequestId></Error>"
                ).encode()
            self._reply(exc.status, body, request_id, content_type="application/xml", head=head)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _address(self, host: str) -> tuple[str | None, str, dict[str, str]]:
        parts = urlsplit(self.path)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        path = unquote(parts.path)
        name = host.split(":", 1)[0]
        if name.startswith(f"{BUCKET}."):
            return BUCKET, path.lstrip("/"), query
        bucket, _, key = path.lstrip("/").partition("/")
        return bucket or None, key, query

    def _reply(
        self, status: int, body: bytes, request_id: str, content_type: str = "application/xml", head: bool = False
    ) -> None:
        self.send_response(status, HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "")
        self.send_header("x-amz-request-id", request_id)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head and body:
            self.wfile.write(body)

    def _send_object(self, stored: StoredObject, range_header: str | None, request_id: str, head: bool) -> None:
        start, end = 0, stored.size - 1
        status = 200
        if range_header:
            m = _RANGE.match(range_header.strip())
            if m is None or (not m[1] and not m[2]):
                raise S3Error(416, "InvalidRange", "The requested range is not satisfiable")
            if m[1]:
                start = int(m[1])
                end = min(int(m[2]), stored.size - 1) if m[2] else stored.size - 1
            else:
                start = max(0, stored.size - int(m[2]))
            if start > end or start >= stored.size:
                raise S3Error(416, "InvalidRange", "The requested range is not satisfiable")
            status = 206
        length = end - start + 1
        self.send_response(status)
        self.send_header("x-amz-request-id", request_id)
        self.send_header("Content-Type", "binary/octet-stream")
        self.send_header("Content-Length", str(length))
        self.send_header("ETag", stored.etag)
        self.send_header("Last-Modified", format_datetime(stored.last_modified, usegmt=True))
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{stored.size}")
        self.end_headers()
        if head:
            return
        with open(stored.path, "rb") as f:
            f.seek(start)
            _copy(f, self.wfile, length)
        self.server_endpoint.counters.bytes_sent += length


def _copy(src: Any, dst: Any, length: int) -> None:
    left = length
    while left > 0:
        chunk = src.read(min(1 << 20, left))
        if not chunk:
            break
        dst.write(chunk)
        left -= len(chunk)
