"""S3 blob store: fragment media in a bucket of any S3-compatible object store.

``media_url = s3://bucket/optional/prefix`` names the bucket and a key prefix of openkvs's own
(the orphan sweep at start deletes every object under it that no fragment names, so the prefix
must hold nothing else); ``s3_endpoint_url`` names a store other than AWS (MinIO, SeaweedFS,
Ceph...). Credentials and region come from the server process's standard AWS chain (environment,
shared config and credentials files, instance or container role), never from openkvs settings;
without a configured region, us-east-1.

botocore is synchronous: every call runs in a bounded thread pool, never on the event loop. A blob
is one PUT with its Content-MD5, so the store keeps all of it or none of it; transient failures
are retried (botocore's standard retry mode) and every call has bounded connect and read
timeouts. ``start`` creates the bucket when it does not exist (several nodes may start at once)
and turns an unreachable endpoint or refused credentials into one clear ConfigError.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import botocore.session
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)

from ..config import ConfigError
from .base import BlobNotFound, BlobStoreError
from .fs import check_key

T = TypeVar("T")

SCHEME = "s3://"
DELETE_BATCH = 1000  # DeleteObjects takes at most 1000 keys
PROBE_TIMEOUT = 5.0  # connect and read timeouts of the start-up and readiness checks
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_PREFIX = re.compile(r"[A-Za-z0-9_.=-]+(/[A-Za-z0-9_.=-]+)*")
_MISSING = {"NoSuchKey", "404", "NotFound"}
_NO_BUCKET = {"NoSuchBucket", "404", "NotFound"}
_REFUSED = {
    "403",
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "InvalidClientTokenId",
    "AuthorizationHeaderMalformed",
}
_CREATED_ELSEWHERE = {"BucketAlreadyOwnedByYou", "BucketAlreadyExists", "OperationAborted"}


def parse_url(url: str) -> tuple[str, str]:
    """(bucket, key prefix ending in "/" or empty) of ``s3://bucket[/prefix]``."""
    if not url.startswith(SCHEME):
        raise ConfigError(f"media_url must be s3://<bucket>[/<prefix>], got {url[:200]!r}")
    bucket, _, prefix = url[len(SCHEME) :].partition("/")
    if not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise ConfigError(
            f"media_url names no valid S3 bucket (3-63 characters: a-z, 0-9, '.', '-'): "
            f"{url[:200]!r}"
        )
    prefix = prefix.strip("/")
    if prefix and (not _PREFIX.fullmatch(prefix) or ".." in prefix.split("/")):
        raise ConfigError(
            f"media_url's key prefix may hold only A-Z a-z 0-9 _ . = - and /: {url[:200]!r}"
        )
    return bucket, f"{prefix}/" if prefix else ""


def _is_blob_key(key: str) -> bool:
    try:
        check_key(key)
    except ValueError:
        return False
    return True


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", "")) or str(
        exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "")
    )


class S3BlobStore:
    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        threads: int = 16,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        max_attempts: int = 4,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.endpoint_url = endpoint_url
        self._threads = threads
        self._timeouts = (connect_timeout, read_timeout)
        self._max_attempts = max_attempts
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="openkvs-s3")
        self._client: Any = None
        self._probe_client: Any = None
        self._probe: asyncio.Future[None] | None = None
        self._client_lock = threading.Lock()
        self._region = "us-east-1"

    @property
    def url(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.prefix}".rstrip("/")

    # Life cycle

    async def start(self) -> None:
        """Open the client and make sure the bucket exists; ConfigError (one line, no secrets)
        when the endpoint cannot be reached or refuses the credentials."""
        try:
            await self._run(self._ensure_bucket)
        except (BotoCoreError, ClientError) as exc:
            raise ConfigError(self._explain(exc)) from None
        except ValueError as exc:  # botocore's word on an endpoint URL it cannot use
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"media_url {self.url}: S3 is not usable ({exc})") from None

    async def stop(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self._pool.shutdown, True)
        for client in (self._client, self._probe_client):
            if client is not None:
                client.close()

    async def reachable(self) -> bool:
        """The bucket answers HeadBucket with these credentials (readiness). Callers that come
        while a check is under way share it: at most one pool thread waits on a silent store."""
        if self._probe is None or self._probe.done():
            self._probe = asyncio.ensure_future(self._run(self._head_bucket))
        await asyncio.shield(self._probe)
        return True

    # Blobs

    async def put(self, key: str, data: bytes) -> None:
        await self._run(self._put, check_key(key), data)

    async def get(self, key: str) -> bytes:
        return await self._run(self._get, check_key(key))

    async def delete(self, keys: Sequence[str]) -> None:
        names = [self.prefix + check_key(k) for k in keys]
        for i in range(0, len(names), DELETE_BATCH):
            await self._run(self._delete_batch, names[i : i + DELETE_BATCH])

    async def keys(self) -> set[str]:
        """The keys under the prefix (objects whose names openkvs could not have made are left
        out, so the orphan sweep never deletes them)."""
        return await self._run(self._keys)

    # In the pool's threads

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def client(self) -> Any:
        """The botocore S3 client of the blob operations, made on first use (in a pool thread:
        it reads config files and service models)."""
        with self._client_lock:
            if self._client is None:
                connect, read = self._timeouts
                self._client = self._new_client(connect, read, self._max_attempts, self._threads)
            return self._client

    def probe_client(self) -> Any:
        """The client of the start-up and readiness checks: short timeouts, one retry, so that
        a silent endpoint fails a start quickly and never holds a pool thread for long."""
        with self._client_lock:
            if self._probe_client is None:
                connect, read = self._timeouts
                self._probe_client = self._new_client(
                    min(connect, PROBE_TIMEOUT), min(read, PROBE_TIMEOUT), 2, 1
                )
            return self._probe_client

    def _new_client(self, connect: float, read: float, attempts: int, connections: int) -> Any:
        session = botocore.session.get_session()
        self._region = session.get_config_variable("region") or "us-east-1"
        config = Config(
            region_name=self._region,
            connect_timeout=connect,
            read_timeout=read,
            retries={"mode": "standard", "max_attempts": attempts},
            max_pool_connections=connections,
            # Content-MD5 is the integrity check every S3-compatible store knows.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            s3={"addressing_style": "path"} if self.endpoint_url else None,
        )
        return session.create_client("s3", endpoint_url=self.endpoint_url, config=config)

    def _head_bucket(self) -> None:
        self.probe_client().head_bucket(Bucket=self.bucket)

    def _ensure_bucket(self) -> None:
        client = self.probe_client()
        try:
            client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            if _code(exc) not in _NO_BUCKET:
                raise
        kwargs: dict[str, Any] = {}
        if self._region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self._region}
        try:
            client.create_bucket(Bucket=self.bucket, **kwargs)
        except ClientError as exc:
            # Another node created it first (or is creating it): it must answer us now.
            if _code(exc) not in _CREATED_ELSEWHERE:
                raise
        for attempt in range(10):
            try:
                client.head_bucket(Bucket=self.bucket)
                return
            except ClientError as exc:
                if _code(exc) not in _NO_BUCKET or attempt == 9:
                    raise
                time.sleep(0.2)

    def _put(self, key: str, data: bytes) -> None:
        md5 = base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()
        try:
            self.client().put_object(
                Bucket=self.bucket, Key=self.prefix + key, Body=data, ContentMD5=md5
            )
        except (BotoCoreError, ClientError) as exc:
            raise self._failed("PutObject", exc) from exc

    def _get(self, key: str) -> bytes:
        try:
            response = self.client().get_object(Bucket=self.bucket, Key=self.prefix + key)
            body = response["Body"]
            try:
                data: bytes = body.read()
            finally:
                body.close()
        except ClientError as exc:
            if _code(exc) in _MISSING:
                raise BlobNotFound(key) from exc
            raise self._failed("GetObject", exc) from exc
        except BotoCoreError as exc:
            raise self._failed("GetObject", exc) from exc
        return data

    def _delete_batch(self, names: list[str]) -> None:
        try:
            response = self.client().delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": n} for n in names], "Quiet": True},
            )
        except (BotoCoreError, ClientError) as exc:
            raise self._failed("DeleteObjects", exc) from exc
        errors = [e for e in response.get("Errors", []) if e.get("Code") not in _MISSING]
        if errors:
            raise BlobStoreError(
                f"S3 DeleteObjects in {self.url}: {len(errors)} of {len(names)} keys not deleted "
                f"({errors[0].get('Code', '?')})"
            )

    def _keys(self) -> set[str]:
        out: set[str] = set()
        try:
            pages = self.client().get_paginator("list_objects_v2")
            for page in pages.paginate(Bucket=self.bucket, Prefix=self.prefix):
                for item in page.get("Contents", []):
                    key = item["Key"][len(self.prefix) :]
                    if _is_blob_key(key):
                        out.add(key)
        except (BotoCoreError, ClientError) as exc:
            raise self._failed("ListObjectsV2", exc) from exc
        return out

    # Errors

    def _failed(self, operation: str, exc: BotoCoreError | ClientError) -> BlobStoreError:
        """A failure in one line that names the store and the error code, not the store's own
        message (which could be mistaken for a local disk's, see ``is_disk_full``)."""
        what = _code(exc) if isinstance(exc, ClientError) else type(exc).__name__
        return BlobStoreError(f"S3 {operation} in {self.url} failed: {what}")

    def _explain(self, exc: BotoCoreError | ClientError) -> str:
        where = f"media_url {self.url}"
        endpoint = self.endpoint_url or "the AWS S3 endpoint"
        if isinstance(exc, NoCredentialsError | PartialCredentialsError):
            return (
                f"{where}: no AWS credentials for S3; give the server process AWS_ACCESS_KEY_ID "
                f"and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE (the standard AWS chain)"
            )
        if isinstance(exc, BotoConnectionError | HTTPClientError):
            return f"{where}: cannot reach {endpoint} ({type(exc).__name__}); check s3_endpoint_url"
        if isinstance(exc, ClientError):
            code = _code(exc)
            if code in _REFUSED:
                return f"{where}: {endpoint} refused the AWS credentials or access ({code})"
            return f"{where}: {endpoint} answered {code} for the bucket"
        return f"{where}: S3 is not usable ({type(exc).__name__}: {exc})"
