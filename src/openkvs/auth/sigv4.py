"""AWS Signature Version 4 verification, as a pure function of the request's parts.

Three request forms are accepted:

- ``header``: the ``Authorization: AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…, Signature=…``
  header (botocore, the AWS SDK for JavaScript, the KVS C SDK);
- ``headers``: the same parts as separate ``X-Amz-Algorithm``, ``X-Amz-Credential``,
  ``X-Amz-SignedHeaders`` and ``X-Amz-Signature`` headers (the openkvs seed client);
- ``query``: presigned query parameters (signaling WebSockets, presigned URLs).

The canonical request follows botocore's signer: the path as sent, with dot segments and repeated
slashes removed, percent-encoded once more; query parameters decoded, re-encoded with the RFC 3986
unreserved set and sorted; header values trimmed with inner whitespace collapsed and repeated
headers joined with commas.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import hmac
import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from urllib.parse import quote, unquote

from ..errors import AuthFailure

ALGORITHM = "AWS4-HMAC-SHA256"
SERVICE = "kinesisvideo"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
STREAMING_PAYLOAD = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
MAX_PRESIGN_EXPIRES = 7 * 24 * 3600

_HEX64 = re.compile(r"[0-9a-f]{64}")
_AMZ_DATE = re.compile(r"\d{8}T\d{6}Z")
_AUTH_PARTS = re.compile(r"(Credential|SignedHeaders|Signature)\s*=\s*([^,\s]*)")

HeaderPairs = Sequence[tuple[str, str]]


@dataclasses.dataclass(frozen=True)
class SignedParts:
    """The SigV4 parameters a request carries, whatever the form."""

    form: str  # "header" | "headers" | "query"
    access_key_id: str
    date: str  # yyyymmdd from the credential scope
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str
    amz_date: str
    security_token: str | None
    expires: int | None  # presigned only
    payload_hash: str | None  # x-amz-content-sha256 as sent, if any

    @property
    def scope(self) -> str:
        return f"{self.date}/{self.region}/{self.service}/aws4_request"


@dataclasses.dataclass(frozen=True)
class Identity:
    """Who a verified request comes from."""

    access_key_id: str
    region: str
    form: str


def _get(headers: HeaderPairs, name: str) -> list[str]:
    lname = name.lower()
    return [v for k, v in headers if k.lower() == lname]


def _first(headers: HeaderPairs, name: str) -> str | None:
    values = _get(headers, name)
    return values[0] if values else None


def parse_query(raw_query: str) -> list[tuple[str, str]]:
    """Split a raw query string into decoded (key, value) pairs, keeping repeats and order."""
    pairs: list[tuple[str, str]] = []
    if not raw_query:
        return pairs
    for part in raw_query.split("&"):
        if not part:
            continue
        key, _, value = part.partition("=")
        pairs.append((unquote(key), unquote(value)))
    return pairs


def parse_signed_parts(headers: HeaderPairs, query: Sequence[tuple[str, str]]) -> SignedParts:
    """Find the SigV4 parameters in the request; raise :class:`AuthFailure` if absent or broken."""
    qmap = {k: v for k, v in query}
    authorization = _first(headers, "authorization")
    payload_hash = _first(headers, "x-amz-content-sha256")
    if authorization is not None:
        algorithm, _, rest = authorization.strip().partition(" ")
        if algorithm != ALGORITHM:
            raise AuthFailure(
                f"Unsupported authorization algorithm: {algorithm[:40]}",
                "IncompleteSignatureException",
            )
        parts = dict(_AUTH_PARTS.findall(rest))
        missing = [p for p in ("Credential", "SignedHeaders", "Signature") if not parts.get(p)]
        if missing:
            raise AuthFailure(
                f"Authorization header requires {', '.join(missing)} parameter(s).",
                "IncompleteSignatureException",
            )
        form = "header"
        credential, signed, signature = (
            parts["Credential"],
            parts["SignedHeaders"],
            parts["Signature"],
        )
        amz_date = _first(headers, "x-amz-date")
        token = _first(headers, "x-amz-security-token")
        expires = None
    elif _first(headers, "x-amz-signature") is not None or _first(headers, "x-amz-credential"):
        form = "headers"
        algorithm = _first(headers, "x-amz-algorithm") or ALGORITHM
        if algorithm != ALGORITHM:
            raise AuthFailure(
                f"Unsupported X-Amz-Algorithm: {algorithm[:40]}", "IncompleteSignatureException"
            )
        credential = _first(headers, "x-amz-credential") or ""
        signed = _first(headers, "x-amz-signedheaders") or ""
        signature = _first(headers, "x-amz-signature") or ""
        missing = [
            n
            for n, v in (
                ("X-Amz-Credential", credential),
                ("X-Amz-SignedHeaders", signed),
                ("X-Amz-Signature", signature),
            )
            if not v
        ]
        if missing:
            raise AuthFailure(
                f"Signature headers incomplete: missing {', '.join(missing)}.",
                "IncompleteSignatureException",
            )
        amz_date = _first(headers, "x-amz-date")
        token = _first(headers, "x-amz-security-token")
        expires = None
    elif "X-Amz-Signature" in qmap or "X-Amz-Credential" in qmap:
        form = "query"
        if qmap.get("X-Amz-Algorithm") != ALGORITHM:
            raise AuthFailure(
                "X-Amz-Algorithm must be AWS4-HMAC-SHA256.", "IncompleteSignatureException"
            )
        credential = qmap.get("X-Amz-Credential", "")
        signed = qmap.get("X-Amz-SignedHeaders", "")
        signature = qmap.get("X-Amz-Signature", "")
        amz_date = qmap.get("X-Amz-Date")
        token = qmap.get("X-Amz-Security-Token")
        if not credential or not signed or not signature:
            raise AuthFailure(
                "Presigned URL requires X-Amz-Credential, X-Amz-SignedHeaders and X-Amz-Signature.",
                "IncompleteSignatureException",
            )
        raw_expires = qmap.get("X-Amz-Expires")
        if raw_expires is None or not raw_expires.isdigit():
            raise AuthFailure(
                "X-Amz-Expires must be a number of seconds.", "IncompleteSignatureException"
            )
        expires = int(raw_expires)
        if expires > MAX_PRESIGN_EXPIRES:
            raise AuthFailure(
                "X-Amz-Expires must be less than a week (in seconds) that is 604800.",
                "AuthorizationQueryParametersError",
            )
    else:
        raise AuthFailure("Missing Authentication Token", "MissingAuthenticationTokenException")

    scope = credential.split("/")
    if len(scope) != 5 or scope[4] != "aws4_request" or not scope[0]:
        raise AuthFailure(
            "Credential should be scoped to a valid region, service and aws4_request terminator.",
            "IncompleteSignatureException",
        )
    if scope[3] != SERVICE:
        raise AuthFailure(
            f"Credential should be scoped to correct service: '{SERVICE}'.",
            "InvalidSignatureException",
        )
    if amz_date is None:
        date_header = _first(headers, "date")
        amz_date = _http_date_to_amz(date_header) if date_header else None
    if amz_date is None or not _AMZ_DATE.fullmatch(amz_date):
        raise AuthFailure(
            "Authorization requires a valid X-Amz-Date in the form yyyyMMdd'T'HHmmss'Z'.",
            "IncompleteSignatureException",
        )
    if scope[1] != amz_date[:8]:
        raise AuthFailure(
            f"Credential should be scoped to a valid date: '{amz_date[:8]}'.",
            "InvalidSignatureException",
        )
    signed_headers = tuple(signed.lower().split(";"))
    if "host" not in signed_headers:
        raise AuthFailure("'Host' must be a signed header.", "InvalidSignatureException")
    return SignedParts(
        form=form,
        access_key_id=scope[0],
        date=scope[1],
        region=scope[2],
        service=scope[3],
        signed_headers=signed_headers,
        signature=signature.lower(),
        amz_date=amz_date,
        security_token=token,
        expires=expires,
        payload_hash=payload_hash,
    )


def _http_date_to_amz(value: str) -> str | None:
    from email.utils import parsedate_to_datetime

    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def amz_date_to_epoch(amz_date: str) -> float:
    # Same result and ValueError as strptime("%Y%m%dT%H%M%SZ"), without strptime's cost on
    # every request.
    if not _AMZ_DATE.fullmatch(amz_date):
        raise ValueError(f"X-Amz-Date {amz_date!r} is not of the form YYYYMMDDTHHMMSSZ")
    d = amz_date
    return datetime(
        int(d[0:4]),
        int(d[4:6]),
        int(d[6:8]),
        int(d[9:11]),
        int(d[11:13]),
        int(d[13:15]),
        tzinfo=UTC,
    ).timestamp()


def remove_dot_segments(path: str) -> str:
    """botocore's normalisation: drop ``.``, resolve ``..``, collapse repeated slashes."""
    if not path:
        return "/"
    out: list[str] = []
    for seg in path.split("/"):
        if seg and seg != ".":
            if seg == "..":
                if out:
                    out.pop()
            else:
                out.append(seg)
    first = "/" if path[0] == "/" else ""
    last = "/" if path[-1] == "/" and out else ""
    return first + "/".join(out) + last


def canonical_uri(raw_path: str) -> str:
    return quote(remove_dot_segments(raw_path), safe="/~")


def canonical_query(pairs: Sequence[tuple[str, str]]) -> str:
    encoded = sorted((quote(k, safe="-_.~"), quote(v, safe="-_.~")) for k, v in pairs)
    return "&".join(f"{k}={v}" for k, v in encoded)


def canonical_headers(headers: HeaderPairs, signed: Sequence[str]) -> str:
    lines = []
    for name in sorted(set(signed)):
        values = _get(headers, name)
        lines.append(f"{name}:" + ",".join(" ".join(v.split()) for v in values))
    return "\n".join(lines) + "\n"


def canonical_request(
    method: str,
    raw_path: str,
    query: Sequence[tuple[str, str]],
    headers: HeaderPairs,
    signed_headers: Sequence[str],
    payload_hash: str,
) -> str:
    return "\n".join(
        [
            method.upper(),
            canonical_uri(raw_path),
            canonical_query(query),
            canonical_headers(headers, signed_headers),
            ";".join(sorted(set(signed_headers))),
            payload_hash,
        ]
    )


@functools.lru_cache(maxsize=256)
def signing_key(secret: str, date: str, region: str, service: str = SERVICE) -> bytes:
    """The derived key; cached, as it only changes with the day (four HMACs per request saved)."""
    k = hmac.new(("AWS4" + secret).encode(), date.encode(), hashlib.sha256).digest()
    k = hmac.new(k, region.encode(), hashlib.sha256).digest()
    k = hmac.new(k, service.encode(), hashlib.sha256).digest()
    return hmac.new(k, b"aws4_request", hashlib.sha256).digest()


def string_to_sign(amz_date: str, scope: str, creq: str) -> str:
    return "\n".join([ALGORITHM, amz_date, scope, hashlib.sha256(creq.encode()).hexdigest()])


def sign(secret: str, parts: SignedParts, creq: str) -> str:
    key = signing_key(secret, parts.date, parts.region, parts.service)
    return hmac.new(
        key, string_to_sign(parts.amz_date, parts.scope, creq).encode(), hashlib.sha256
    ).hexdigest()


SecretLookup = Callable[[str], "tuple[str, str | None] | None"]


def verify(
    *,
    method: str,
    raw_path: str,
    raw_query: str,
    headers: HeaderPairs,
    body_sha256: Callable[[], str] | None,
    lookup: SecretLookup,
    now: float,
    max_skew: float = 900.0,
    allow_streaming: bool = False,
) -> Identity:
    """Verify a request; return who sent it or raise :class:`AuthFailure`.

    ``body_sha256`` returns the hex SHA-256 of the body (``None`` for bodies that are streamed and
    never hashed up front; then the payload hash must be UNSIGNED or STREAMING, or, with
    ``allow_streaming``, absent: the request is then signed as if its body were empty, the way
    the KVS Producer SDK signs PutMedia). ``lookup`` maps an access key id to
    ``(secret, session_token_or_None)``.
    """
    query = parse_query(raw_query)
    parts = parse_signed_parts(headers, query)
    found = lookup(parts.access_key_id)
    if found is None:
        raise AuthFailure(
            "The security token included in the request is invalid.", "UnrecognizedClientException"
        )
    secret, required_token = found
    if required_token is not None and not (
        parts.security_token is not None
        and hmac.compare_digest(parts.security_token.encode(), required_token.encode())
    ):
        raise AuthFailure(
            "The security token included in the request is invalid.", "UnrecognizedClientException"
        )

    signed_at = amz_date_to_epoch(parts.amz_date)
    if parts.form == "query":
        assert parts.expires is not None
        if now > signed_at + parts.expires:
            raise AuthFailure(
                f"Signature expired: {parts.amz_date} is now earlier than "
                f"{_fmt(now - parts.expires)} ({_fmt(now)} - {parts.expires} sec.)",
                "InvalidSignatureException",
            )
        if signed_at - now > max_skew:
            raise AuthFailure(
                f"Signature not yet current: {parts.amz_date} is still later than "
                f"{_fmt(now + max_skew)} ({_fmt(now)} + {int(max_skew / 60)} min.)",
                "InvalidSignatureException",
            )
        canonical_pairs = [(k, v) for k, v in query if k != "X-Amz-Signature"]
        payload_hash = dict(query).get("X-Amz-Content-Sha256") or (
            body_sha256() if body_sha256 is not None else EMPTY_SHA256
        )
    else:
        if now - signed_at > max_skew:
            raise AuthFailure(
                f"Signature expired: {parts.amz_date} is now earlier than "
                f"{_fmt(now - max_skew)} ({_fmt(now)} - {int(max_skew / 60)} min.)",
                "InvalidSignatureException",
            )
        if signed_at - now > max_skew:
            raise AuthFailure(
                f"Signature not yet current: {parts.amz_date} is still later than "
                f"{_fmt(now + max_skew)} ({_fmt(now)} + {int(max_skew / 60)} min.)",
                "InvalidSignatureException",
            )
        canonical_pairs = query
        if parts.payload_hash is not None:
            payload_hash = parts.payload_hash
            if payload_hash in (UNSIGNED_PAYLOAD, STREAMING_PAYLOAD):
                if payload_hash == STREAMING_PAYLOAD and not allow_streaming:
                    raise AuthFailure(
                        "STREAMING-AWS4-HMAC-SHA256-PAYLOAD is only accepted by PutMedia.",
                        "InvalidSignatureException",
                    )
            elif not _HEX64.fullmatch(payload_hash):
                raise AuthFailure(
                    "x-amz-content-sha256 must be a hex SHA-256, UNSIGNED-PAYLOAD or "
                    "STREAMING-AWS4-HMAC-SHA256-PAYLOAD.",
                    "InvalidSignatureException",
                )
            elif body_sha256 is None:
                raise AuthFailure(
                    "This operation streams its body: sign it with UNSIGNED-PAYLOAD or "
                    "STREAMING-AWS4-HMAC-SHA256-PAYLOAD.",
                    "InvalidSignatureException",
                )
            elif not hmac.compare_digest(payload_hash, body_sha256()):
                raise AuthFailure(
                    "The provided 'x-amz-content-sha256' header does not match what was computed.",
                    "InvalidSignatureException",
                )
        elif body_sha256 is None:
            if not allow_streaming:
                raise AuthFailure(
                    "This operation streams its body: send x-amz-content-sha256 with "
                    "UNSIGNED-PAYLOAD or STREAMING-AWS4-HMAC-SHA256-PAYLOAD.",
                    "InvalidSignatureException",
                )
            # The KVS Producer SDK signs a streamed body as if it were empty and sends no
            # x-amz-content-sha256 (as AWS accepts): the signature covers the headers, the body
            # is carried by TLS. Only streaming operations get this.
            payload_hash = EMPTY_SHA256
        else:
            payload_hash = body_sha256()

    creq = canonical_request(
        method, raw_path, canonical_pairs, headers, parts.signed_headers, payload_hash
    )
    expected = sign(secret, parts, creq)
    if not hmac.compare_digest(expected.encode(), parts.signature.encode()):
        raise AuthFailure(
            "The request signature we calculated does not match the signature you provided. "
            "Check your AWS Secret Access Key and signing method.",
            "InvalidSignatureException",
        )
    return Identity(access_key_id=parts.access_key_id, region=parts.region, form=parts.form)


def _fmt(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y%m%dT%H%M%SZ")


def presign_url(
    *,
    method: str,
    scheme: str,
    host: str,
    path: str,
    params: Sequence[tuple[str, str]],
    access_key_id: str,
    secret: str,
    region: str,
    amz_date: str,
    expires: int,
    security_token: str | None = None,
) -> str:
    """Build a presigned URL the way the KVS JS SDK does (used by tests, the demo and tools)."""
    date = amz_date[:8]
    query = list(params) + [
        ("X-Amz-Algorithm", ALGORITHM),
        ("X-Amz-Credential", f"{access_key_id}/{date}/{region}/{SERVICE}/aws4_request"),
        ("X-Amz-Date", amz_date),
        ("X-Amz-Expires", str(expires)),
        ("X-Amz-SignedHeaders", "host"),
    ]
    if security_token:
        query.append(("X-Amz-Security-Token", security_token))
    parts = SignedParts(
        form="query",
        access_key_id=access_key_id,
        date=date,
        region=region,
        service=SERVICE,
        signed_headers=("host",),
        signature="",
        amz_date=amz_date,
        security_token=security_token,
        expires=expires,
        payload_hash=None,
    )
    creq = canonical_request(method, path, query, [("host", host)], ("host",), EMPTY_SHA256)
    signature = sign(secret, parts, creq)
    return f"{scheme}://{host}{path}?{canonical_query(query)}&X-Amz-Signature={signature}"
