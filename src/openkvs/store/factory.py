"""The one place that chooses the storage backends, from settings.

``database_url`` names the metadata store and ``media_url`` the blob store; both default to the
embedded backends under the data directory (``sqlite:///<data-dir>/openkvs.db`` and
``file://<data-dir>/media``). ``database_url`` may instead name a PostgreSQL database
(``postgresql://user@host:port/db``) that several nodes share, and ``media_url =
s3://bucket[/prefix]`` keeps media in an S3-compatible object store (``s3_endpoint_url``
names one other than AWS). The server and its storage worker processes both open their
backends here, from the same settings.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from urllib.parse import urlsplit

from ..config import ConfigError, Settings
from .base import BlobStore, MetadataStore
from .fs import FsBlobStore
from .sqlite import SqliteMetadataStore

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


@dataclasses.dataclass(frozen=True)
class Backends:
    meta: MetadataStore
    blobs: BlobStore


def database_url(settings: Settings) -> str:
    return settings.database_url or f"sqlite:///{settings.data_dir / 'openkvs.db'}"


def media_url(settings: Settings) -> str:
    return settings.media_url or f"file://{settings.data_dir / 'media'}"


def _path(url: str, prefix: str, setting: str) -> Path:
    """The local path of ``<prefix><path>`` (taken literally: ``sqlite:///data/openkvs.db`` is
    relative, ``sqlite:////data/openkvs.db`` and ``file:///data/media`` absolute)."""
    if not url.startswith(prefix):
        if setting == "database_url":
            raise ConfigError(
                f"database_url must be sqlite:///<path> or postgresql://user@host:port/db, "
                f"got {url.partition(':')[0][:20]!r}://..."
            )
        raise ConfigError(f"{setting} must be {prefix}<path>, got {url[:200]!r}")
    path = url[len(prefix) :]
    if not path:
        raise ConfigError(f"{setting} names no path: {url[:200]!r}")
    return Path(path)


def media_root(settings: Settings) -> Path:
    """The folder a ``file://`` media_url names (ConfigError for any other scheme)."""
    return _path(media_url(settings), "file://", "media_url")


def blob_store(settings: Settings) -> BlobStore:
    """The blob store alone (storage worker processes write blobs, never metadata)."""
    url = media_url(settings)
    if url.lower().startswith("s3://"):
        from .s3 import S3BlobStore, parse_url

        bucket, prefix = parse_url("s3://" + url[len("s3://") :])
        return S3BlobStore(bucket, prefix, endpoint_url=settings.s3_endpoint_url)
    if settings.s3_endpoint_url is not None:
        raise ConfigError("s3_endpoint_url is set, but media_url is not s3://<bucket>[/<prefix>]")
    return FsBlobStore(media_root(settings))


def metadata_store(settings: Settings) -> MetadataStore:
    """The metadata store alone (not started)."""
    url = database_url(settings)
    if url.lower().startswith(POSTGRES_SCHEMES):
        from .postgres import PostgresMetadataStore, describe_url

        if not urlsplit(url).path.strip("/"):
            raise ConfigError(f"database_url names no database: {describe_url(url)}")
        return PostgresMetadataStore(url)
    return SqliteMetadataStore(
        _path(url, "sqlite:///", "database_url"), secrets_dir=settings.data_dir
    )


def open_backends(settings: Settings) -> Backends:
    """The metadata and blob stores the settings name (not started); ConfigError for a URL that
    this build cannot serve."""
    blobs = blob_store(settings)
    return Backends(meta=metadata_store(settings), blobs=blobs)
