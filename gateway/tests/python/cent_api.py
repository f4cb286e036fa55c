"""Interoperability check: the server HTTP API of a two-node cluster through the
real `cent` library (PyPI, Centrifugo's server API client), with the real
`centrifuge-python` SDK as the user's connection. Run by gateway/tests/it/python.rs as

  python3 cent_api.py <api-url-A> <api-url-B> <ws-url-B> <api-key> <token>

Nodes A and B share one Redis. The API is called through A (and through B to
compare answers); the SDK connects to B with <token>. The top-level namespace must
keep history and presence; `nope:` must not be a namespace.

Prints one line per check, then one JSON line {"ok":true,...}. On the first failure
it prints the reason and the SDK's frame log, and exits 1. It always exits.
"""

import asyncio
import json
import sys

from cent import (
    AsyncClient,
    BatchRequest,
    BroadcastRequest,
    ChannelsRequest,
    DisconnectRequest,
    HistoryRemoveRequest,
    HistoryRequest,
    InfoRequest,
    PresenceRequest,
    PresenceStatsRequest,
    PublishRequest,
    RefreshRequest,
    SubscribeRequest,
    UnsubscribeRequest,
)
from cent.exceptions import CentApiResponseError, CentUnauthorizedError
from centrifuge import Client, ClientState, SubscriptionState

from interop_util import (
    WAIT_S,
    CheckFailed,
    ClientEvents,
    SubEvents,
    check,
    code_reason,
    counts,
    eq,
    jwt_sub,
    position,
    run,
    step,
    versions,
    within,
)

ROOM = "room"
SERVER_SIDE = "srv"
BATCH = "batch"
BAD = "nope:x"
OVERALL_S = 75


def dump(result):
    """A cent result as plain JSON values (for comparing answers of A and B)."""
    return result.model_dump(mode="json")


async def api_error(call, what):
    """The CentApiResponseError `call` must raise."""
    try:
        r = await call
    except CentApiResponseError as e:
        return e
    raise CheckFailed(f"{what}: expected an API error, got result {r!r}")


async def eventually(probe, ok, what):
    """Call `probe()` until `ok(result)`, bounded by WAIT_S; returns the result."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while True:
        r = await probe()
        if ok(r):
            return r
        check(loop.time() < deadline, f"timed out waiting for {what}; last answer {r!r}")
        await asyncio.sleep(0.05)


async def main():
    api_a, api_b, ws_b, key, token = sys.argv[1:6]
    user = jwt_sub(token)
    a = AsyncClient(api_a, key, timeout=WAIT_S)
    b = AsyncClient(api_b, key, timeout=WAIT_S)
    ev = ClientEvents("sdk")
    sdk = Client(ws_b, events=ev, token=token, name="cent-interop", timeout=WAIT_S, proxy=None)
    try:
        await checks(a, b, sdk, ev, user)
    finally:
        await sdk.disconnect()
        await a.close()
        await b.close()


async def checks(a, b, sdk, ev, user):
    # 0. The SDK connects to B and subscribes (recoverable: positions are reported).
    rev = SubEvents("room")
    room = sdk.new_subscription(ROOM, events=rev, recoverable=True)
    await within(sdk.connect(), "sdk connect")
    conn = await ev.connected.next("sdk connected to B")
    client_id = conn.client
    await room.subscribe()
    sub = await rev.subscribed.next("sdk subscribed to room")
    check(sub.stream_position is not None, f"no stream position in {sub!r}")
    eq(sub.stream_position.offset, 0, "stream top of a new room")
    epoch = sub.stream_position.epoch
    check(epoch, "empty epoch at subscribe")
    step(f"0 SDK on B: client={client_id} user={user}; subscribed {ROOM} offset=0 epoch={epoch}")

    # 1. publish via A reaches the subscriber on B; the result's position is what it sees.
    sent = [{"text": "via api A", "n": 1}]
    r = await a.publish(PublishRequest(channel=ROOM, data=sent[0]))
    eq(position(r), {"offset": 1, "epoch": epoch}, "publish result")
    p = (await rev.pubs.next("publication via A on B")).pub
    eq(p.data, sent[0], "publication data")
    eq(p.offset, r.offset, "publication offset = publish result offset")
    check(p.info is None, f"server API publication carries client info {p.info!r}")
    step(f"1 publish via A: result offset={r.offset} epoch={r.epoch}; SDK on B got it at offset {p.offset}")

    # 2. broadcast to a good and a bad channel: each answers alone, in order.
    sent.append({"text": "broadcast", "n": 2})
    r = await a.broadcast(BroadcastRequest(channels=[ROOM, BAD], data=sent[1]))
    eq(len(r.responses), 2, "broadcast responses")
    good, bad = r.responses
    check(good.error is None, f"broadcast to {ROOM} failed: {good.error!r}")
    eq(position(good.result), {"offset": 2, "epoch": epoch}, "broadcast result for room")
    check(bad.error is not None and bad.result is None, f"broadcast to {BAD}: {bad!r}")
    eq(bad.error.code, 102, f"broadcast error code for {BAD}")
    p = (await rev.pubs.next("broadcast publication on B")).pub
    eq({"data": p.data, "offset": p.offset}, {"data": sent[1], "offset": 2}, "broadcast publication")
    await rev.pubs.quiet("room after the broadcast")
    step(
        f"2 broadcast [{ROOM}, {BAD}]: {ROOM} delivered at offset 2; "
        f"{BAD} answered error {bad.error.code} ({bad.error.message})"
    )

    # 3. presence and presence_stats: A and B agree and list the SDK client on B.
    pa = await a.presence(PresenceRequest(channel=ROOM))
    pb = await b.presence(PresenceRequest(channel=ROOM))
    eq(sorted(pa.presence), [client_id], "presence via A: client ids")
    mine = pa.presence[client_id]
    eq({"client": mine.client, "user": mine.user}, {"client": client_id, "user": user}, "presence via A")
    eq(dump(pa), dump(pb), "presence via A vs via B")
    sa = await a.presence_stats(PresenceStatsRequest(channel=ROOM))
    sb = await b.presence_stats(PresenceStatsRequest(channel=ROOM))
    eq(counts(sa), {"num_clients": 1, "num_users": 1}, "presence_stats via A")
    eq(dump(sa), dump(sb), "presence_stats via A vs via B")
    step("3 presence via A and B: the SDK client on B; presence_stats {num_clients:1,num_users:1} on both")

    # 4. history via A and B agree.
    ha = await a.history(HistoryRequest(channel=ROOM, limit=10))
    hb = await b.history(HistoryRequest(channel=ROOM, limit=10))
    eq([p.offset for p in ha.publications], [1, 2], "history offsets")
    eq([p.data for p in ha.publications], sent, "history data")
    eq(position(ha), {"offset": 2, "epoch": epoch}, "history top")
    eq(dump(ha), dump(hb), "history via A vs via B")
    step("4 history via A and B: offsets [1,2], top offset 2, same epoch")

    # 5. history_remove empties the history and keeps the position.
    await a.history_remove(HistoryRemoveRequest(channel=ROOM))
    ha = await a.history(HistoryRequest(channel=ROOM, limit=10))
    hb = await b.history(HistoryRequest(channel=ROOM, limit=10))
    eq(dump(ha), {"publications": [], "offset": 2, "epoch": epoch}, "history via A after history_remove")
    eq(dump(ha), dump(hb), "history via A vs via B after history_remove")
    step("5 history_remove via A: history empty via A and B, offset 2 and epoch kept")

    # 6. channels surveys both nodes.
    ca = await a.channels(ChannelsRequest())
    cb = await b.channels(ChannelsRequest())
    eq(dump(ca), {"channels": {ROOM: {"num_clients": 1}}}, "channels via A")
    eq(dump(ca), dump(cb), "channels via A vs via B")
    step(f"6 channels via A and B: {{{ROOM}: num_clients 1}}")

    # 7. info lists both nodes (heartbeats are short in this test).
    # Node stats travel with the heartbeats: wait for both nodes and the SDK's connection.
    listed = lambda r: len(r.nodes) == 2 and sum(n.num_clients for n in r.nodes) == 1  # noqa: E731
    ia = await eventually(lambda: a.info(InfoRequest()), listed, "info via A to list 2 nodes and 1 client")
    ib = await eventually(lambda: b.info(InfoRequest()), listed, "info via B to list 2 nodes and 1 client")
    eq(sorted(n.uid for n in ia.nodes), sorted(n.uid for n in ib.nodes), "info node uids via A vs via B")
    check(len({n.uid for n in ia.nodes}) == 2, f"info: node uids not distinct: {dump(ia)}")
    step(f"7 info via A and B: 2 nodes {sorted(n.uid for n in ia.nodes)}, 1 client in all")

    # 8. subscribe via A: a server-side subscription on B, then its publications.
    await a.subscribe(SubscribeRequest(user=user, channel=SERVER_SIDE))
    ss = await ev.server_subscribed.next("server-side subscribed event")
    eq(ss.channel, SERVER_SIDE, "server-side subscribed channel")
    data = {"text": "to the server-side subscription"}
    r = await a.publish(PublishRequest(channel=SERVER_SIDE, data=data))
    sp = await ev.server_pubs.next("server-side publication")
    eq(
        {"channel": sp.channel, "data": sp.pub.data, "offset": sp.pub.offset},
        {"channel": SERVER_SIDE, "data": data, "offset": r.offset},
        "server-side publication",
    )
    step(
        f"8 subscribe via A: SDK on B got on_subscribed({SERVER_SIDE}, recoverable={ss.recoverable}) "
        f"and the publication at offset {sp.pub.offset}"
    )

    # 9. unsubscribe via A ends both subscriptions on B.
    await a.unsubscribe(UnsubscribeRequest(user=user, channel=ROOM))
    u = await rev.unsubscribed.next("room unsubscribed")
    eq(u.code, 2000, "unsubscribe code")
    eq(room.state, SubscriptionState.UNSUBSCRIBED, "room subscription state")
    await a.unsubscribe(UnsubscribeRequest(user=user, channel=SERVER_SIDE))
    su = await ev.server_unsubscribed.next("server-side unsubscribed event")
    eq(su.channel, SERVER_SIDE, "server-side unsubscribed channel")
    await eventually(
        lambda: a.presence_stats(PresenceStatsRequest(channel=ROOM)),
        lambda s: s.num_clients == 0,
        "presence_stats of room to drop to 0",
    )
    await a.publish(PublishRequest(channel=ROOM, data={"after": "unsubscribe"}))
    await rev.pubs.quiet("room after unsubscribe")
    step(
        f"9 unsubscribe via A: room unsubscribed code={u.code} reason={u.reason!r}; "
        f"server-side {SERVER_SIDE} unsubscribed; presence 0"
    )

    # 10. batch: two commands, two replies in order (the second sees the first).
    r = await a.batch(
        BatchRequest(
            requests=[
                PublishRequest(channel=BATCH, data={"n": 1}),
                HistoryRequest(channel=BATCH, limit=10),
            ]
        )
    )
    eq(len(r.replies), 2, "batch replies")
    first, second = r.replies
    check(type(first).__name__ == "PublishResult", f"batch reply 1 is {first!r}")
    check(type(second).__name__ == "HistoryResult", f"batch reply 2 is {second!r}")
    eq(first.offset, 1, "batch publish offset")
    eq([(p.offset, p.data) for p in second.publications], [(1, {"n": 1})], "batch history")
    step("10 batch [publish, history]: 2 replies in order; history sees the publish")

    # 11. a wrong API key is refused.
    for label, url in (("A", a._session._base_url), ("B", b._session._base_url)):
        wrong = AsyncClient(url, "wrong-key", timeout=WAIT_S)
        try:
            await wrong.info(InfoRequest())
            raise CheckFailed(f"info via {label} with a wrong key succeeded")
        except CentUnauthorizedError:
            pass
        finally:
            await wrong.close()
    step("11 wrong API key via A and B: CentUnauthorizedError (HTTP 401)")

    # 12. bad input.
    e = await api_error(a.publish(PublishRequest(channel=BAD, data={"x": 1})), f"publish to {BAD}")
    eq(e.code, 102, f"publish to {BAD}: code")
    e2 = await api_error(a.publish(PublishRequest(channel=ROOM, data=None)), "publish without data")
    eq(e2.code, 107, "publish without data: code")
    step(
        f"12 bad input: unknown namespace -> {e.code} ({e.message}); "
        f"publish without data -> {e2.code} ({e2.message})"
    )

    # 13. refresh expired via A: the connection on B is closed as expired.
    ev.connecting.drain()
    await a.refresh(RefreshRequest(user=user, expired=True))
    c = await ev.connecting.until(lambda x: x.code != 0, "connecting after refresh expired")
    eq(code_reason(c), {"code": 3005, "reason": "connection expired"}, "SDK report after refresh expired")
    conn2 = await ev.connected.next("SDK reconnects after expiry")
    check(conn2.client != client_id, f"reconnect kept client id {conn2.client}")
    step(
        f"13 refresh expired via A: SDK on_connecting code={c.code} reason={c.reason!r} (reconnects), "
        f"reconnected client={conn2.client}"
    )

    # 14. disconnect via A: closed with 3503, the SDK stops.
    await a.disconnect(DisconnectRequest(user=user))
    d = await ev.disconnected.next("SDK disconnected")
    eq(code_reason(d), {"code": 3503, "reason": "force disconnect"}, "SDK report after disconnect")
    eq(sdk.state, ClientState.DISCONNECTED, "SDK state after disconnect")
    await ev.connected.quiet("no reconnect after 3503")
    step(f"14 disconnect via A: SDK on_disconnected code={d.code} reason={d.reason!r}; no reconnect")

    print(json.dumps({"ok": True, "checks": 14, "client": client_id, "epoch": epoch, **versions()}), flush=True)


if __name__ == "__main__":
    run(main, OVERALL_S)
