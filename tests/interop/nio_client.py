#!/usr/bin/env python3
"""Interop check: matrix-nio, a real Matrix client library, uses weft.

Run by tests/nio_interop.rs against an in-process weft server whose users
it registered. Speaks only through nio's public API (nio.AsyncClient), and
checks every answer: nio does not raise on failures, it returns *Error
objects (also when a response does not match its JSON schema), so each
call is checked against its success type.

Flow:
  alice logs in, syncs, creates a room (name, topic), sends N messages
  (one resent with the same transaction id), syncs incrementally (sees
  them), pages back through /messages from the sync's prev_batch, from its
  next_batch and from the room's end, checking order and content exactly;
  invites bob; bob logs in, sees the invite, joins, sees the history via
  sync, long-polls a sync that a later message of alice wakes; both list
  their joined rooms and members and log out; the old token is refused.

Exits 0 and prints a summary on success; on any failure prints what was
asked, what weft answered (status, body) and what nio made of it, and
exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
import traceback
from typing import Any

try:
    import nio
    from nio import (
        AsyncClient,
        AsyncClientConfig,
        ErrorResponse,
        JoinedMembersResponse,
        JoinedRoomsResponse,
        JoinResponse,
        LoginResponse,
        LogoutResponse,
        RoomCreateEvent,
        RoomCreateResponse,
        RoomInviteResponse,
        RoomMemberEvent,
        RoomMessagesResponse,
        RoomMessageText,
        RoomSendResponse,
        SyncResponse,
        WhoamiError,
        WhoamiResponse,
    )
    from nio.events.misc import BadEvent, UnknownBadEvent
except ImportError as e:  # pragma: no cover - reported by the Rust side too
    print(f"cannot import matrix-nio: {e}; run tools/test (it installs it)", file=sys.stderr)
    sys.exit(3)

MARKER = "weft.interop.seq"


class Failure(Exception):
    """A check failed; the message says what and why."""


# Warnings nio logs while parsing (schema validation failures, bad events).
# They name the field that did not match, so they go into failure reports.
class _Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(f"{record.name}: {record.getMessage()}")
        del self.records[:-20]


NIO_LOG = _Recorder()
logging.getLogger("nio").addHandler(NIO_LOG)
logging.getLogger("nio").setLevel(logging.WARNING)
logging.getLogger("nio").propagate = False


def step(msg: str) -> None:
    print(f"[nio-interop] {msg}", flush=True)


def short(value: Any, limit: int = 4000) -> str:
    text = value if isinstance(value, str) else json.dumps(value, indent=None, sort_keys=True, default=str)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"


async def describe(resp: Any) -> str:
    """What nio returned and, where known, the HTTP exchange behind it."""
    if isinstance(resp, ErrorResponse):
        lines = [f"  nio returned: {resp}"]
    else:
        lines = [f"  nio returned: {type(resp).__name__}"]
    transport = getattr(resp, "transport_response", None)
    if transport is not None:
        lines.append(f"  request:      {transport.method} {transport.url}")
        lines.append(f"  status:       {transport.status}")
        lines.append(f"  content-type: {transport.headers.get('Content-Type')}")
        try:
            body = await transport.text()
        except Exception as e:  # noqa: BLE001 - diagnostics only
            body = f"<unreadable: {e}>"
        lines.append(f"  body:         {short(body)}")
    if NIO_LOG.records:
        lines.append("  nio warnings (latest last):")
        lines.extend(f"    {r}" for r in NIO_LOG.records[-5:])
    return "\n".join(lines)


async def expect(resp: Any, cls: type | tuple[type, ...], what: str) -> Any:
    if not isinstance(resp, cls):
        names = cls.__name__ if isinstance(cls, type) else " or ".join(c.__name__ for c in cls)
        raise Failure(f"{what}: expected {names}\n{await describe(resp)}")
    return resp


async def check(cond: bool, what: str, resp: Any = None) -> None:
    if not cond:
        detail = f"\n{await describe(resp)}" if resp is not None else ""
        raise Failure(f"{what}{detail}")


async def no_bad_events(events: list[Any], where: str, resp: Any) -> None:
    bad = [e for e in events if isinstance(e, (BadEvent, UnknownBadEvent))]
    if bad:
        sources = "\n".join(f"    {short(getattr(e, 'source', e), 1500)}" for e in bad[:5])
        raise Failure(f"{where}: nio could not parse {len(bad)} event(s) (failed its event schema):\n{sources}\n{await describe(resp)}")


def seq_of(event: Any) -> int | None:
    """The sequence number of one of our messages, else None."""
    if not isinstance(event, RoomMessageText):
        return None
    content = event.source.get("content", {})
    seq = content.get(MARKER)
    return seq if isinstance(seq, int) else None


def body_for(i: int, n: int) -> str:
    return f"interop message {i:02d}/{n}"


def new_client(homeserver: str, user: str) -> AsyncClient:
    config = AsyncClientConfig(
        max_timeouts=2,
        max_limit_exceeded=3,
        request_timeout=30,
        store_sync_tokens=False,
        encryption_enabled=False,
    )
    return AsyncClient(homeserver, user, config=config)


async def login(client: AsyncClient, password: str, who: str) -> LoginResponse:
    resp = await expect(await client.login(password, device_name=f"nio interop ({who})"), LoginResponse, f"{who}: login")
    await check(resp.user_id.startswith("@"), f"{who}: login user_id {resp.user_id!r} is not a user id", resp)
    await check(bool(resp.access_token), f"{who}: login returned an empty access_token", resp)
    await check(bool(resp.device_id), f"{who}: login returned an empty device_id", resp)
    who_resp = await expect(await client.whoami(), WhoamiResponse, f"{who}: whoami")
    await check(who_resp.user_id == resp.user_id, f"{who}: whoami says {who_resp.user_id!r}, login said {resp.user_id!r}", who_resp)
    await check(
        who_resp.device_id in (None, resp.device_id),
        f"{who}: whoami device_id {who_resp.device_id!r}, login said {resp.device_id!r}",
        who_resp,
    )
    return resp


async def sync(client: AsyncClient, who: str, **kwargs: Any) -> SyncResponse:
    resp = await expect(await client.sync(**kwargs), SyncResponse, f"{who}: sync {kwargs or ''}")
    await check(bool(resp.next_batch), f"{who}: sync without next_batch", resp)
    for room_id, info in resp.rooms.join.items():
        await no_bad_events(info.timeline.events, f"{who}: sync timeline of {room_id}", resp)
        await no_bad_events(info.state, f"{who}: sync state of {room_id}", resp)
    return resp


async def page_back(
    client: AsyncClient,
    room_id: str,
    start: str | None,
    label: str,
    limit: int = 7,
    max_pages: int = 100,
    reach_create: bool = True,
) -> tuple[list[Any], int]:
    """Pages /messages backwards from `start` to the start of the room.

    Returns every event in the order received (newest first) and the
    number of pages. Fails on repeated events, a page token that does not
    move, or (with `reach_create`) history that ends before m.room.create.
    """
    events: list[Any] = []
    seen_ids: set[str] = set()
    token = start
    for page in range(1, max_pages + 1):
        resp = await expect(
            await client.room_messages(room_id, start=token, limit=limit),
            RoomMessagesResponse,
            f"{label}: /messages page {page} from {token!r}",
        )
        await no_bad_events(resp.chunk, f"{label}: /messages page {page}", resp)
        await check(len(resp.chunk) <= limit, f"{label}: page {page} has {len(resp.chunk)} events, limit was {limit}", resp)
        if token is not None:
            await check(resp.start == token, f"{label}: page {page} start {resp.start!r} is not the from token {token!r}", resp)
        for ev in resp.chunk:
            await check(ev.event_id not in seen_ids, f"{label}: event {ev.event_id} returned twice while paging", resp)
            seen_ids.add(ev.event_id)
            events.append(ev)
        if not resp.end:
            # Spec: `end` is omitted when there are no more events.
            await check(
                not reach_create or any(isinstance(e, RoomCreateEvent) for e in events),
                f"{label}: pagination ended (no `end`) after page {page} without reaching m.room.create",
                resp,
            )
            return events, page
        await check(resp.end != token, f"{label}: page {page} end token {resp.end!r} equals its from token (no progress)", resp)
        if not resp.chunk and any(isinstance(e, RoomCreateEvent) for e in events):
            return events, page
        token = resp.end
    raise Failure(f"{label}: /messages did not reach the start of the room in {max_pages} pages of {limit}")


async def check_history(
    events: list[Any], expected: list[tuple[int, str]], label: str, newest_first: bool, total: int
) -> None:
    """Our messages among `events` must be exactly `expected` (seq, event id), once each, in order."""
    got = [(seq_of(e), e.event_id, e) for e in events if seq_of(e) is not None]
    want = list(reversed(expected)) if newest_first else list(expected)
    got_pairs = [(s, i) for s, i, _ in got]
    if got_pairs != want:
        order = "newest first" if newest_first else "oldest first"
        raise Failure(
            f"{label}: messages differ from those sent ({order})\n"
            f"  want seqs: {[s for s, _ in want]}\n"
            f"  got seqs:  {[s for s, _ in got_pairs]}\n"
            f"  want ids:  {[i for _, i in want]}\n"
            f"  got ids:   {[i for _, i in got_pairs]}"
        )
    for seq, _, ev in got:
        if ev.body != body_for(seq, total) or ev.source["content"].get("msgtype") != "m.text":
            raise Failure(f"{label}: message {seq} has wrong content: {short(ev.source)}")


async def run(args: argparse.Namespace) -> str:
    n = args.messages
    alice = new_client(args.homeserver, args.user)
    bob = new_client(args.homeserver, args.user2) if args.user2 else None
    try:
        # --- alice: login, initial sync -----------------------------------
        step("alice: login")
        login_a = await login(alice, args.password, "alice")
        alice_id = login_a.user_id
        first = await sync(alice, "alice")
        step(f"alice: initial sync ok (next_batch {first.next_batch!r})")

        # --- create a room with name and topic ----------------------------
        name, topic = "nio interop room", "made by matrix-nio against weft"
        created = await expect(await alice.room_create(name=name, topic=topic), RoomCreateResponse, "alice: room_create")
        room_id = created.room_id
        await check(room_id.startswith("!"), f"alice: room_create room_id {room_id!r} is not a room id", created)
        step(f"alice: created {room_id}")

        s = await sync(alice, "alice", timeout=0)
        await check(room_id in s.rooms.join, f"alice: incremental sync after createRoom lacks {room_id} in rooms.join", s)
        room = alice.rooms.get(room_id)
        await check(room is not None, "alice: nio has no MatrixRoom for the new room after sync", s)
        await check(room.name == name, f"alice: room name after sync is {room.name!r}, want {name!r}", s)
        await check(room.topic == topic, f"alice: room topic after sync is {room.topic!r}, want {topic!r}", s)
        await check(alice_id in room.users, f"alice: nio's member list {list(room.users)} lacks {alice_id}", s)
        before_send = s.next_batch

        # --- send N messages (first one resent with its transaction id) -----
        sent: list[tuple[int, str]] = []
        for i in range(1, n + 1):
            content = {"msgtype": "m.text", "body": body_for(i, n), MARKER: i}
            txn = f"interop-{i}"
            resp = await expect(
                await alice.room_send(room_id, "m.room.message", content, tx_id=txn),
                RoomSendResponse,
                f"alice: room_send #{i}",
            )
            await check(resp.event_id.startswith("$"), f"alice: room_send #{i} event_id {resp.event_id!r}", resp)
            if i == 1:
                again = await expect(
                    await alice.room_send(room_id, "m.room.message", content, tx_id=txn),
                    RoomSendResponse,
                    "alice: room_send #1 again with the same txn id",
                )
                await check(
                    again.event_id == resp.event_id,
                    f"alice: resending txn {txn} gave a new event {again.event_id}, first was {resp.event_id} (must be idempotent)",
                    again,
                )
            sent.append((i, resp.event_id))
        ids = [e for _, e in sent]
        await check(len(set(ids)) == n, f"alice: room_send returned duplicate event ids: {ids}")
        step(f"alice: sent {n} messages")

        # --- incremental sync sees the new messages --------------------------
        s = await sync(alice, "alice", since=before_send, timeout=0)
        await check(room_id in s.rooms.join, f"alice: sync since {before_send!r} lacks the room although {n} messages were sent", s)
        tl = s.rooms.join[room_id].timeline
        in_sync = [(seq_of(e), e.event_id) for e in tl.events if seq_of(e) is not None]
        await check(len(in_sync) > 0, "alice: sync since the last token shows none of the sent messages", s)
        # The timeline holds the newest messages, oldest first; if it holds
        # fewer than all, it must say it is limited and give a prev_batch.
        await check_history(tl.events, sent[n - len(in_sync):], "alice: incremental sync timeline", newest_first=False, total=n)
        if len(in_sync) < n:
            await check(tl.limited, f"alice: sync timeline shows {len(in_sync)}/{n} new messages but limited is false", s)
        await check(bool(tl.prev_batch), "alice: sync timeline without prev_batch", s)
        step(f"alice: incremental sync shows {len(in_sync)} of {n} (limited={tl.limited})")
        after_send = s.next_batch

        # --- page back from prev_batch: the rest, newest first -------------------
        evs, pages = await page_back(alice, room_id, tl.prev_batch, "alice: from sync prev_batch")
        await check_history(evs, sent[: n - len(in_sync)], "alice: /messages from sync prev_batch", newest_first=True, total=n)
        step(f"alice: /messages from prev_batch: {pages} pages, rest of history ok")

        # --- page back from next_batch and from the end: everything ---------------
        evs, pages = await page_back(alice, room_id, after_send, "alice: from sync next_batch")
        await check_history(evs, sent, "alice: /messages from sync next_batch", newest_first=True, total=n)
        step(f"alice: /messages from next_batch: {pages} pages, all {n} in order")
        evs, pages = await page_back(alice, room_id, None, "alice: from the end (no from)")
        await check_history(evs, sent, "alice: /messages without from", newest_first=True, total=n)
        step(f"alice: /messages without from: {pages} pages, all {n} in order")

        # --- nothing new: sync since next_batch has no new messages --------------
        s = await sync(alice, "alice", since=after_send, timeout=0)
        joined = s.rooms.join.get(room_id)
        stale = [seq_of(e) for e in (joined.timeline.events if joined else []) if seq_of(e) is not None]
        await check(not stale, f"alice: sync since {after_send!r} repeats already seen messages {stale}", s)

        jr = await expect(await alice.joined_rooms(), JoinedRoomsResponse, "alice: joined_rooms")
        await check(room_id in jr.rooms, f"alice: joined_rooms {jr.rooms} lacks {room_id}", jr)

        summary_bob = "no second user"
        if bob is not None:
            summary_bob = await second_user(args, alice, bob, alice_id, room_id, sent)

        # --- logout, old token refused ----------------------------------------
        token = alice.access_token
        device = alice.device_id
        await expect(await alice.logout(), LogoutResponse, "alice: logout")
        ghost = new_client(args.homeserver, alice_id)
        ghost.restore_login(alice_id, device, token)
        try:
            w = await ghost.whoami()
            NIO_LOG.records.clear()  # nio warns while parsing this expected error
            await check(isinstance(w, WhoamiError), f"alice: token still works after logout ({type(w).__name__})", w)
            await check(
                w.status_code == "M_UNKNOWN_TOKEN",
                f"alice: after logout whoami gave errcode {w.status_code!r}, want M_UNKNOWN_TOKEN",
                w,
            )
        finally:
            await ghost.close()
        step("alice: logout ok, old token refused")
        return f"{n} messages sent, synced and paged back in order; {summary_bob}; logout ok"
    finally:
        await alice.close()
        if bob is not None:
            await bob.close()


async def second_user(
    args: argparse.Namespace, alice: AsyncClient, bob: AsyncClient, alice_id: str, room_id: str, sent: list[tuple[int, str]]
) -> str:
    n = len(sent)
    step("bob: login")
    login_b = await login(bob, args.password2, "bob")
    bob_id = login_b.user_id
    s = await sync(bob, "bob")
    await check(room_id not in s.rooms.join, "bob: the room is in bob's rooms.join before he joined", s)

    await expect(await alice.room_invite(room_id, bob_id), RoomInviteResponse, "alice: invite bob")
    s = await sync(bob, "bob", timeout=0)
    await check(room_id in s.rooms.invite, f"bob: sync after the invite lacks {room_id} in rooms.invite (has {list(s.rooms.invite)})", s)
    step("bob: sees the invite")

    joined = await expect(await bob.join(room_id), JoinResponse, "bob: join")
    await check(joined.room_id == room_id, f"bob: join answered room_id {joined.room_id!r}, want {room_id!r}", joined)
    step("bob: joined")

    # A full sync with a timeline big enough for the whole room.
    big = {"room": {"timeline": {"limit": n + 20}}}
    bob.next_batch = None  # an initial sync, not one since the invite
    s = await sync(bob, "bob", sync_filter=big, timeout=0)
    await check(room_id in s.rooms.join, f"bob: initial sync after joining lacks {room_id} in rooms.join", s)
    info = s.rooms.join[room_id]
    await check_history(info.timeline.events, sent, "bob: initial sync timeline (limit fits the room)", newest_first=False, total=n)
    await check(not info.timeline.limited, "bob: timeline holds the whole room yet limited is true", s)
    members = [e for e in info.timeline.events if isinstance(e, RoomMemberEvent) and e.state_key == bob_id]
    await check(
        any(e.membership == "join" for e in members),
        f"bob: his own join is not in the timeline (member events for him: {[e.membership for e in members]})",
        s,
    )
    room = bob.rooms.get(room_id)
    await check(room is not None and room.name == "nio interop room", f"bob: room name {getattr(room, 'name', None)!r}", s)
    await check(room is not None and set(room.users) >= {alice_id, bob_id}, f"bob: nio members {list(room.users) if room else None}", s)
    step(f"bob: initial sync shows all {n} messages")

    # The timeline holds the whole room, so paging back from its
    # prev_batch finds nothing more.
    await check(
        any(isinstance(e, RoomCreateEvent) for e in info.timeline.events),
        f"bob: a timeline with limit {n + 20} does not reach m.room.create",
        s,
    )
    evs, _ = await page_back(bob, room_id, info.timeline.prev_batch, "bob: from sync prev_batch", reach_create=False)
    await check(not evs, f"bob: /messages before a complete timeline returned {[e.event_id for e in evs]}")

    # Long poll: bob waits (timeout 10 s) on a sync with nothing new; it
    # must still be waiting when alice sends, and must wake with her message.
    since = s.next_batch
    content = {"msgtype": "m.text", "body": "wake up bob", MARKER: n + 1}
    poll = asyncio.create_task(bob.sync(timeout=10_000, since=since))
    await asyncio.sleep(0.5)
    if poll.done():
        early = poll.result()
        await check(False, f"bob: sync since {since!r} with timeout=10000 returned within 0.5s although nothing happened", early)
    t0 = time.monotonic()
    sent_resp = await expect(
        await alice.room_send(room_id, "m.room.message", content, tx_id="interop-wake"),
        RoomSendResponse,
        "alice: room_send while bob polls",
    )
    resp = await expect(await poll, SyncResponse, "bob: long-poll sync")
    waited = time.monotonic() - t0
    timeline = resp.rooms.join[room_id].timeline.events if room_id in resp.rooms.join else []
    await no_bad_events(timeline, "bob: long-poll sync", resp)
    seen = [e for e in timeline if e.event_id == sent_resp.event_id]
    await check(bool(seen), f"bob: long-poll sync returned after {waited:.2f}s without alice's message {sent_resp.event_id}", resp)
    await check(
        isinstance(seen[0], RoomMessageText) and seen[0].body == "wake up bob",
        f"bob: wake message arrived as {short(seen[0].source)}",
    )
    others = [seq_of(e) for e in timeline if seq_of(e) is not None and seq_of(e) != n + 1]
    await check(not others, f"bob: long-poll sync repeats old messages {others}", resp)
    step(f"bob: long poll woke with alice's message after {waited:.2f}s")

    jm = await expect(await bob.joined_members(room_id), JoinedMembersResponse, "bob: joined_members")
    ids = sorted(m.user_id for m in jm.members)
    await check(ids == sorted([alice_id, bob_id]), f"bob: joined_members {ids}, want {sorted([alice_id, bob_id])}", jm)
    jr = await expect(await bob.joined_rooms(), JoinedRoomsResponse, "bob: joined_rooms")
    await check(jr.rooms == [room_id], f"bob: joined_rooms {jr.rooms}, want [{room_id!r}]", jr)
    await expect(await bob.logout(), LogoutResponse, "bob: logout")
    step("bob: logout ok")
    return f"second user joined after invite, saw all {n} via sync, long poll woke in {waited:.2f}s"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--homeserver", required=True, help="client API base URL, e.g. http://127.0.0.1:8008")
    p.add_argument("--user", required=True, help="first user (localpart or full id), must exist")
    p.add_argument("--password", required=True)
    p.add_argument("--user2", help="second user, must exist; joins alice's room")
    p.add_argument("--password2")
    p.add_argument("--messages", type=int, default=30, help="messages to send (default 30)")
    args = p.parse_args()
    if args.user2 and not args.password2:
        p.error("--user2 needs --password2")
    step(f"matrix-nio {getattr(nio, '__version__', None) or _nio_version()} against {args.homeserver}")
    try:
        summary = asyncio.run(asyncio.wait_for(run(args), timeout=240))
    except Failure as e:
        print(f"[nio-interop] FAILED: {e}", file=sys.stderr, flush=True)
        return 1
    except asyncio.TimeoutError:
        print("[nio-interop] FAILED: the whole flow took longer than 240s", file=sys.stderr, flush=True)
        return 1
    except Exception:  # noqa: BLE001 - nio raises on transport errors
        print("[nio-interop] FAILED: unexpected exception", file=sys.stderr, flush=True)
        traceback.print_exc()
        if NIO_LOG.records:
            print("nio warnings:\n  " + "\n  ".join(NIO_LOG.records), file=sys.stderr, flush=True)
        return 1
    if NIO_LOG.records:
        # Not fatal (nio coped), but worth seeing: usually a response shape nio did not expect.
        step("nio logged warnings:\n  " + "\n  ".join(NIO_LOG.records))
    step(f"OK: {summary}")
    return 0


def _nio_version() -> str:
    try:
        from importlib.metadata import version

        return version("matrix-nio")
    except Exception:  # noqa: BLE001
        return "?"


if __name__ == "__main__":
    sys.exit(main())
