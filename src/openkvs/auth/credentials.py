"""Access keys: the generated default key plus keys from the config file.

The generated key is a secret of the metadata store (``credentials.json`` in the data dir for the
embedded store; a row shared by every node for PostgreSQL)."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterable
from pathlib import Path

from .. import ids
from ..config import CredentialConfig
from ..privatefile import SecretSource, read_or_create
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
        self.default: Principal | None = None  # the generated key, once loaded

    def lookup(self, access_key_id: str) -> tuple[str, str | None] | None:
        p = self._by_key.get(access_key_id)
        return None if p is None else (p.secret_access_key, p.session_token)

    def principal(self, access_key_id: str) -> Principal | None:
        return self._by_key.get(access_key_id)

    def __len__(self) -> int:
        return len(self._by_key)

    def add_default(self, principal: Principal) -> None:
        """Serve the generated key too (a configured key of the same id keeps its policy)."""
        self._by_key.setdefault(principal.access_key_id, principal)
        self.default = principal

    @classmethod
    def load(cls, configured: Iterable[CredentialConfig]) -> CredentialStore:
        """The configured keys; the generated one is added at start-up (``add_default``)."""
        principals = []
        for c in configured:
            try:
                policy = Policy.from_document(c.policy) if c.policy is not None else None
            except PolicyError as exc:
                raise ValueError(f"invalid policy for {c.access_key_id}: {exc}") from exc
            principals.append(
                Principal(c.access_key_id, c.secret_access_key, c.session_token, policy)
            )
        return cls(principals)


def new_credentials_text() -> str:
    return json.dumps(
        {"access_key_id": ids.access_key_id(), "secret_access_key": ids.secret_access_key()}
    )


def parse_credentials(text: str, where: str) -> Principal:
    try:
        data = json.loads(text)
        return Principal(str(data["access_key_id"]), str(data["secret_access_key"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{where} does not hold a generated access key") from exc


def default_principal(data_dir: Path) -> Principal:
    """The generated key kept in the data dir (single node), created (mode 0600) on first use."""
    path = data_dir / CREDENTIALS_FILE
    return parse_credentials(read_or_create(path, new_credentials_text()), str(path))


async def shared_principal(secrets: SecretSource) -> Principal:
    """The generated key as the metadata store keeps it: the same on every node of a cluster."""
    return parse_credentials(
        await secrets(CREDENTIALS_FILE, new_credentials_text()), CREDENTIALS_FILE
    )
