"""Regular nomination of one candidate pair (openkvs's ICE side as the controlling agent), with
two in-process aioice connections on the machine's host addresses: exactly one pair carries
USE-CANDIDATE, both ends select it, and neither a later check nor a stray USE-CANDIDATE from the
other side moves it."""

from __future__ import annotations

import asyncio
import socket
from types import SimpleNamespace

from aioice import Candidate, Connection, stun
from aioice.ice import CandidatePair

from openkvs.webrtc import tap


async def _pair_up(controlling: Connection, controlled: Connection) -> None:
    await asyncio.gather(controlling.gather_candidates(), controlled.gather_candidates())
    # A second host socket on the controlled side's first address, so there is more than one
    # working pair whatever the machine's interfaces (aioice skips loopback).
    first = controlled.local_candidates[0]
    controlled._local_candidates += await controlled.get_component_candidates(1, [first.host])
    for a, b in ((controlling, controlled), (controlled, controlling)):
        a.remote_username, a.remote_password = b.local_username, b.local_password
        for c in b.local_candidates:
            await a.add_remote_candidate(c)
        await a.add_remote_candidate(None)
    await asyncio.wait_for(asyncio.gather(controlling.connect(), controlled.connect()), 10)


def _nominated(conn: Connection) -> list[CandidatePair]:
    return [p for p in conn._check_list if p.nominated]


async def test_one_pair_is_nominated_and_kept() -> None:
    ours = Connection(ice_controlling=True)
    theirs = Connection(ice_controlling=False)
    tap.nominate_regularly(SimpleNamespace(_connection=ours), wait=0.3)
    try:
        await _pair_up(ours, theirs)
        assert len(ours.remote_candidates) >= 2  # more than one pair could be nominated
        selected = ours._nominated[1]
        mirror = theirs._nominated[1]
        assert (selected.local_addr, selected.remote_addr) == (
            mirror.remote_addr,
            mirror.local_addr,
        )
        assert _nominated(ours) == [selected] and _nominated(theirs) == [mirror]
        # The best succeeded pair, in the check list's (priority) order.
        succeeded = [p for p in ours._check_list if p.state == CandidatePair.State.SUCCEEDED]
        assert succeeded and succeeded[0] is selected

        # The controlled side checks another pair and even (wrongly) asks to use it.
        others = [
            (p, r)
            for p in theirs._protocols
            for r in theirs.remote_candidates
            if p.local_candidate.can_pair_with(r)
            and ((p.local_candidate.host, p.local_candidate.port), (r.host, r.port))
            != (mirror.local_addr, mirror.remote_addr)
        ]
        assert others
        for protocol, remote in others:
            pair = CandidatePair(protocol, remote)
            request = theirs.build_request(pair, nominate=False)
            request.attributes["USE-CANDIDATE"] = None
            await protocol.request(
                request, pair.remote_addr, integrity_key=theirs.remote_password.encode()
            )
        await asyncio.sleep(0.5)  # openkvs's triggered checks on those pairs complete
        assert ours._nominated[1] is selected and _nominated(ours) == [selected]
        assert tap.selected_pair(SimpleNamespace(_connection=ours)) == (
            selected.local_addr,
            selected.remote_addr,
        )
    finally:
        await asyncio.gather(ours.close(), theirs.close())


async def test_a_better_pair_still_checking_is_waited_for() -> None:
    """The first pair to succeed is not nominated while a better one is still being checked."""
    ours = Connection(ice_controlling=True, use_ipv6=False)
    theirs = Connection(ice_controlling=False, use_ipv6=False)
    nomination = tap.nominate_regularly(SimpleNamespace(_connection=ours), wait=0.5)
    await asyncio.gather(ours.gather_candidates(), theirs.gather_candidates())
    # A remote candidate better than every real one, which never answers.
    host = theirs.local_candidates[0]
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # takes packets, never answers
    sink.bind((host.host, 0))
    silent = Candidate(
        foundation="silent",
        component=1,
        transport="udp",
        priority=host.priority + 1000,
        host=host.host,
        port=sink.getsockname()[1],
        type="host",
    )
    try:
        ours.remote_username, ours.remote_password = theirs.local_username, theirs.local_password
        theirs.remote_username, theirs.remote_password = ours.local_username, ours.local_password
        for c in [silent, *theirs.local_candidates]:
            await ours.add_remote_candidate(c)
        for c in ours.local_candidates:
            await theirs.add_remote_candidate(c)
        await ours.add_remote_candidate(None)
        await theirs.add_remote_candidate(None)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await asyncio.wait_for(asyncio.gather(ours.connect(), theirs.connect()), 10)
        waited = loop.time() - t0
        assert ours._nominated[1].remote_candidate.port == host.port
        assert waited >= 0.45, waited  # the silent, better pair was given its moment
        assert nomination is not None and nomination.chosen is ours._nominated[1]
    finally:
        sink.close()
        await asyncio.gather(ours.close(), theirs.close())


async def test_controlled_role_keeps_aioice_behaviour_but_never_hops() -> None:
    """If openkvs ends up controlled (a role conflict), the remote's nomination is followed, but
    once a pair is selected a later USE-CANDIDATE on another pair does not move it."""
    ours = Connection(ice_controlling=False)
    theirs = Connection(ice_controlling=True)
    tap.nominate_regularly(SimpleNamespace(_connection=ours))
    try:
        await _pair_up(theirs, ours)  # theirs nominates aggressively (stock aioice)
        selected = ours._nominated[1]
        for protocol in theirs._protocols:
            for remote in theirs.remote_candidates:
                if not protocol.local_candidate.can_pair_with(remote):
                    continue
                pair = CandidatePair(protocol, remote)
                try:
                    await protocol.request(
                        theirs.build_request(pair, nominate=True),
                        pair.remote_addr,
                        integrity_key=theirs.remote_password.encode(),
                    )
                except stun.TransactionError:
                    pass
        await asyncio.sleep(0.5)
        assert ours._nominated[1] is selected
    finally:
        await asyncio.gather(ours.close(), theirs.close())
