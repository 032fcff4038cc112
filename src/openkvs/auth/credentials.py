"""Access keys: the generated default key in the data dir plus keys from the config file."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from .. import ids
from ..config import CredentialConfig
from .policy import Policy, PolicyError

logger = logging.getLogger(__name__)

CREDENTIALS_FILE = "credentials.json"


@dataclasses.dataclass(frozen=True)
class Principal:
    access_key_id: str
    secret_access_key: str
    session_token: str | None = None
    policy: Policy | None = None  # None: full access

    def allows(self, action: str, resource: str) -> bool:
        return self.policy is None or self.policy.allows(action, resource)


class CredentialStore:
    def __init__(self, principals: Iterable[Principal]) -> None:
        self._by_key = {p.access_key_id: p for p in principals}

    def lookup(self, access_key_id: str) -> tuple[str, str | None] | None:
        p = self._by_key.get(access_key_id)
        return None if p is None else (p.secret_access_key, p.session_token)

    def principal(self, access_key_id: str) -> Principal | None:
        return self._by_key.get(access_key_id)

    def __len__(self) -> int:
        return len(self._by_key)

    @classmethod
    def load(cls, data_dir: Path, configured: Iterable[CredentialConfig]) -> CredentialStore:
        principals = [default_principal(data_dir)]
        for c in configured:
            try:
                policy = Policy.from_document(c.policy) if c.policy is not None else None
            except PolicyError as exc:
                raise ValueError(f"invalid policy for {c.access_key_id}: {exc}") from exc
            principals.append(
                Principal(c.access_key_id, c.secret_access_key, c.session_token, policy)
            )
        return cls(principals)


def default_principal(data_dir: Path) -> Principal:
    """Read the generated key from the data dir, creating it (mode 0600) on first use."""
    path = data_dir / CREDENTIALS_FILE
    if path.exists():
        _tighten(path)
        data = json.loads(path.read_text())
        return Principal(data["access_key_id"], data["secret_access_key"])
    data_dir.mkdir(parents=True, exist_ok=True)
    principal = Principal(ids.access_key_id(), ids.secret_access_key())
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(
            {
                "access_key_id": principal.access_key_id,
                "secret_access_key": principal.secret_access_key,
            },
            fh,
        )
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    logger.info("generated access key %s in %s", principal.access_key_id, path)
    return principal


def _tighten(path: Path) -> None:
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        os.chmod(path, 0o600)
        logger.warning("tightened permissions of %s to 0600", path)
