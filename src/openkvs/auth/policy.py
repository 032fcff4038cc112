"""IAM-style policies attached to access keys.

A policy is ``{"Statement": [{"Effect": "Allow"|"Deny", "Action": …, "Resource": …}]}`` where
``Action`` and ``Resource`` are a string or a list of strings with ``*`` and ``?`` wildcards.
An explicit Deny wins; otherwise some Allow must match; otherwise the call is denied.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any


class PolicyError(ValueError):
    """A policy document is malformed."""


def _compile(pattern: str, ignore_case: bool) -> re.Pattern[str]:
    rx = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile(rx, re.IGNORECASE | re.DOTALL if ignore_case else re.DOTALL)


@dataclasses.dataclass(frozen=True)
class Statement:
    allow: bool
    actions: tuple[re.Pattern[str], ...]
    resources: tuple[re.Pattern[str], ...]

    def matches(self, action: str, resource: str) -> bool:
        return any(a.fullmatch(action) for a in self.actions) and any(
            r.fullmatch(resource) for r in self.resources
        )


@dataclasses.dataclass(frozen=True)
class Policy:
    statements: tuple[Statement, ...]

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> Policy:
        raw = doc.get("Statement")
        if isinstance(raw, Mapping):
            raw = [raw]
        if not isinstance(raw, Sequence) or isinstance(raw, str) or not raw:
            raise PolicyError("policy needs a non-empty Statement list")
        statements = []
        for i, st in enumerate(raw):
            if not isinstance(st, Mapping):
                raise PolicyError(f"Statement[{i}] must be an object")
            effect = st.get("Effect")
            if effect not in ("Allow", "Deny"):
                raise PolicyError(f"Statement[{i}].Effect must be Allow or Deny")
            actions = _strings(st.get("Action"), f"Statement[{i}].Action")
            resources = _strings(st.get("Resource", "*"), f"Statement[{i}].Resource")
            statements.append(
                Statement(
                    allow=effect == "Allow",
                    actions=tuple(_compile(a, True) for a in actions),
                    resources=tuple(_compile(r, False) for r in resources),
                )
            )
        return cls(tuple(statements))

    def allows(self, action: str, resource: str) -> bool:
        allowed = False
        for st in self.statements:
            if st.matches(action, resource):
                if not st.allow:
                    return False
                allowed = True
        return allowed


def _strings(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, Sequence) and value and all(isinstance(v, str) for v in value):
        return list(value)
    raise PolicyError(f"{where} must be a string or a list of strings")
