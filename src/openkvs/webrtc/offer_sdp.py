"""Pure text rewrites of the storage peer's SDP offer, for what KVS WebRTC clients expect.

- One DTLS fingerprint, SHA-256, per media section. aiortc lists SHA-256, SHA-384 and SHA-512;
  the KVS WebRTC C SDK keeps only the last ``a=fingerprint`` it parses and compares it with a
  SHA-256 digest of the certificate, so any other fingerprint makes its DTLS verification fail.
  Browsers send exactly one SHA-256 fingerprint, which every client understands.
- ``a=ice-options:trickle`` at session level (RFC 8840): the C SDK only answers before its
  candidate gathering ends (up to 10 s) when the offer announces trickle ICE.
- No ``a=end-of-candidates`` while server-reflexive and relay candidates are still gathered: the
  offer carries the host candidates and the rest follow as ICE_CANDIDATE messages.
"""

from __future__ import annotations

from collections.abc import Sequence

FINGERPRINT = "a=fingerprint:"
TRICKLE = "a=ice-options:trickle"
END_OF_CANDIDATES = "a=end-of-candidates"


def _lines(sdp: str) -> list[str]:
    return [line for line in sdp.replace("\r\n", "\n").split("\n") if line]


def _join(lines: Sequence[str]) -> str:
    return "\r\n".join(lines) + "\r\n"


def single_sha256_fingerprint(sdp: str) -> str:
    """Keep one ``a=fingerprint:sha-256`` line per section (session or media) and drop the others.

    Raises ValueError if a section lists fingerprints but none of them is SHA-256 (the offer
    would then be unverifiable by clients that only hash with SHA-256).
    """
    out: list[str] = []
    section_has_any = False
    section_kept = False
    for line in _lines(sdp):
        if line.startswith("m="):
            if section_has_any and not section_kept:
                raise ValueError("the SDP has no sha-256 fingerprint")
            section_has_any = section_kept = False
        if line.startswith(FINGERPRINT):
            section_has_any = True
            algorithm = line[len(FINGERPRINT) :].split(" ", 1)[0].lower()
            if algorithm != "sha-256" or section_kept:
                continue
            section_kept = True
        out.append(line)
    if section_has_any and not section_kept:
        raise ValueError("the SDP has no sha-256 fingerprint")
    return _join(out)


def add_trickle_option(sdp: str) -> str:
    """Announce trickle ICE at session level (before the first media section), once."""
    lines = _lines(sdp)
    session: list[str] = []
    rest: list[str] = []
    for line in lines:
        (rest if rest or line.startswith("m=") else session).append(line)
    options = [i for i, line in enumerate(session) if line.startswith("a=ice-options:")]
    if options:
        i = options[0]
        values = session[i][len("a=ice-options:") :].split()
        if "trickle" not in values:
            session[i] = "a=ice-options:" + " ".join([*values, "trickle"])
    else:
        # After the timing line and any session attributes already present (RFC 8866 order).
        session.append(TRICKLE)
    return _join(session + rest)


def drop_end_of_candidates(sdp: str) -> str:
    return _join([line for line in _lines(sdp) if line != END_OF_CANDIDATES])


def storage_offer(sdp: str, *, more_candidates: bool) -> str:
    """The storage peer's offer as sent: one SHA-256 fingerprint, trickle ICE announced, and no
    end-of-candidates if more candidates will be trickled."""
    sdp = add_trickle_option(single_sha256_fingerprint(sdp))
    return drop_end_of_candidates(sdp) if more_candidates else sdp
