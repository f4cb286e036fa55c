"""Interoperability check: the real centrifuge-python SDK (PyPI `centrifuge-python`,
pinned in requirements.txt) against running gateways, the same steps as the
centrifuge-js check in ../sdk/interop.mjs. Run by gateway/tests/it/python.rs as

  python3 sdk_interop.py <ws-url-A> <ws-url-B> <token-A> <token-B>

Client A starts on node A, client B on node B (the same URL twice for one node).
When A reconnects it goes to node B, so with two nodes its recovery is served by the
other node. The room must keep history and presence, and announce joins/leaves.

Prints one line per step, then one JSON line {"ok":true,...}. On the first failure
it prints the reason and the SDK's frame log, and exits 1. It always exits.
"""

import json
import sys
import time

from centrifuge import Client

from interop_util import (
    ClientEvents,
    SubEvents,
    check,
    counts,
    eq,
    jwt_sub,
    position,
    run,
    step,
    versions,
    within,
)

ROOM = "chat"
OVERALL_S = 75


def make_client(label, url, token):
    """A client with one subscription to ROOM (recoverable, join/leave), not connected."""
    ev = ClientEvents(label)
    client = Client(url, events=ev, token=token, name=f"interop-{label}", timeout=5.0, proxy=None)
    sev = SubEvents(label)
    sub = client.new_subscription(ROOM, events=sev, recoverable=True, join_leave=True)
    return client, ev, sub, sev


def info_of(p):
    check(p.info is not None, f"publication at offset {p.offset} has no info")
    return {"user": p.info.user, "client": p.info.client}


async def expect_pub(label, sev, data, offset, sender, what):
    """The next publication is exactly `data` at `offset` from `sender`."""
    p = (await sev.pubs.next(f"{label}: {what}")).pub
    eq(p.data, data, f"{label}: {what}: data")
    eq(p.offset, offset, f"{label}: {what}: offset")
    eq(info_of(p), sender, f"{label}: {what}: publisher info")
    return p


async def main():
    url_a, url_b, token_a, token_b = sys.argv[1:5]
    user_a, user_b = jwt_sub(token_a), jwt_sub(token_b)
    check(user_a != user_b, "the two tokens must be for different users")
    started = time.monotonic()
    clients = []
    try:
        result = await steps(url_a, url_b, token_a, token_b, user_a, user_b, clients)
    finally:
        for c in clients:
            await c.disconnect()
    result["ms"] = int((time.monotonic() - started) * 1000)
    print(json.dumps(result), flush=True)


async def steps(url_a, url_b, token_a, token_b, user_a, user_b, clients):
    # 1. A connects and subscribes.
    a, a_ev, a_sub, a_sev = make_client("A", url_a, token_a)
    clients.append(a)
    await within(a.connect(), "A connect")
    conn_a = await a_ev.connected.next("A connected")
    check(conn_a.client, "A: connected without a client id")
    await a_sub.subscribe()
    s = await a_sev.subscribed.next("A subscribed")
    eq(
        {"recoverable": s.recoverable, "was_recovering": s.was_recovering, "recovered": s.recovered},
        {"recoverable": True, "was_recovering": False, "recovered": False},
        "A: first subscribed",
    )
    check(s.stream_position is not None and s.stream_position.epoch, f"A: no stream position: {s!r}")
    eq(s.stream_position.offset, 0, "A: stream top of a new room")
    epoch = s.stream_position.epoch
    info_a = {"user": user_a, "client": conn_a.client}
    step(f"1 A connected client={conn_a.client} user={user_a}; subscribed {ROOM} epoch={epoch} offset=0")

    # 2. A publishes and receives its own publication.
    sent = [{"text": "hello from A", "n": 1}]
    await within(a_sub.publish(sent[0]), "A publish reply")
    await expect_pub("A", a_sev, sent[0], 1, info_a, "own publication")
    step("2 A published and received its own publication at offset 1")

    # 3. B joins the room and publishes; A sees the join and the publication with B's info.
    b, b_ev, b_sub, b_sev = make_client("B", url_b, token_b)
    clients.append(b)
    await within(b.connect(), "B connect")
    conn_b = await b_ev.connected.next("B connected")
    check(conn_b.client and conn_b.client != conn_a.client, f"B: bad client id {conn_b.client}")
    await b_sub.subscribe()
    sb = await b_sev.subscribed.next("B subscribed")
    check(sb.stream_position is not None, f"B: no stream position: {sb!r}")
    eq(position(sb.stream_position), {"offset": 1, "epoch": epoch}, "B: stream position at subscribe")
    info_b = {"user": user_b, "client": conn_b.client}
    join = await a_sev.joins.until(lambda j: j.info.client == conn_b.client, "A sees B join")
    eq(join.info.user, user_b, "A: join user")
    sent.append({"text": "hello from B", "n": 2})
    await within(b_sub.publish(sent[1]), "B publish reply")
    await expect_pub("A", a_sev, sent[1], 2, info_b, "B's publication")
    await expect_pub("B", b_sev, sent[1], 2, info_b, "own publication")
    step(f"3 B connected client={conn_b.client} user={user_b}; A saw B join and got B's publication at offset 2")

    # 4. Presence and presence stats.
    presence = await within(a_sub.presence(), "A presence")
    clients_seen = presence.clients
    eq(sorted(clients_seen), sorted([conn_a.client, conn_b.client]), "presence: client ids")
    for cid, info in ((conn_a.client, info_a), (conn_b.client, info_b)):
        eq({"user": clients_seen[cid].user, "client": clients_seen[cid].client}, info, f"presence: {cid}")
    stats = await within(a_sub.presence_stats(), "A presence_stats")
    eq(counts(stats), {"num_clients": 2, "num_users": 2}, "presence_stats")
    step("4 presence lists A and B; presence_stats {num_clients:2,num_users:2}")

    # 5. History: offsets 1..n in order, top of stream.
    history = await within(a_sub.history(limit=10), "A history")
    eq([p.offset for p in history.publications], [1, 2], "history offsets")
    eq([p.data for p in history.publications], sent, "history data")
    eq(position(history), {"offset": 2, "epoch": epoch}, "history top")
    one = await within(a_sub.history(limit=1), "A history limit 1")
    eq([p.offset for p in one.publications], [1], "history limit 1 offsets")
    step("5 history(limit 10) has offsets [1,2] in order; top offset 2, same epoch; limit 1 gives [1]")

    # 6. A goes away; B sees the leave and presence shrinks.
    await a.disconnect()
    d = await a_ev.disconnected.next("A disconnected")
    await b_sev.leaves.until(lambda l: l.info.client == conn_a.client, "B sees A leave")
    stats_b = await within(b_sub.presence_stats(), "B presence_stats")
    eq(counts(stats_b), {"num_clients": 1, "num_users": 1}, "presence_stats after A left")
    step(f"6 A disconnected (code {d.code}); B saw A leave; presence_stats {{num_clients:1,num_users:1}}")

    # 7. B publishes three messages while A is away.
    for n in range(3, 6):
        data = {"text": f"missed {n}", "n": n}
        await within(b_sub.publish(data), f"B publish {n}")
        sent.append(data)
        await expect_pub("B", b_sev, data, n, info_b, f"own publication {n}")
    step("7 B published 3 messages (offsets 3..5) while A was away")

    # 8. A reconnects on the same object: the SDK resubscribes with recover. It goes
    # to node B (the SDK has no public setter for the address; `_address` is what
    # its constructor stores and every connection attempt dials).
    a._address = url_b
    await within(a.connect(), "A reconnect")
    conn_a2 = await a_ev.connected.next("A reconnected")
    check(conn_a2.client and conn_a2.client != conn_a.client, f"A: reconnect kept client id {conn_a2.client}")
    resub = await a_sev.subscribed.next("A resubscribed")
    eq(
        {"was_recovering": resub.was_recovering, "recovered": resub.recovered, "recoverable": resub.recoverable},
        {"was_recovering": True, "recovered": True, "recoverable": True},
        "A: resubscribed",
    )
    check(resub.stream_position is not None, f"A: no stream position: {resub!r}")
    eq(resub.stream_position.epoch, epoch, "A: epoch after recovery")
    for n in range(3, 6):
        await expect_pub("A", a_sev, sent[n - 1], n, info_b, f"recovered publication {n}")
    await a_sev.pubs.quiet("A: after the 3 recovered publications")
    step(
        f"8 A reconnected to {url_b} client={conn_a2.client}; "
        "subscribed was_recovering=True recovered=True; got offsets 3,4,5 once each"
    )

    # 9. Live delivery goes on after the recovery, without duplicates.
    live = {"text": "live after recovery", "n": 6}
    await within(b_sub.publish(live), "B publish 6")
    sent.append(live)
    await expect_pub("A", a_sev, live, 6, info_b, "live publication after recovery")
    await a_sev.pubs.quiet("A: after the live publication")
    history2 = await within(a_sub.history(limit=-1), "A history after recovery")
    eq([p.offset for p in history2.publications], [1, 2, 3, 4, 5, 6], "history offsets after recovery")
    eq([p.data for p in history2.publications], sent, "history data after recovery")
    step("9 A got the live publication at offset 6, no duplicates; history has offsets 1..6")

    check(not a_sev.errors and not b_sev.errors, f"subscription error events: {a_sev.errors + b_sev.errors!r}")
    return {
        "ok": True,
        **versions(),
        "clientA": conn_a.client,
        "clientA2": conn_a2.client,
        "clientB": conn_b.client,
        "epoch": epoch,
        "publications": len(sent),
        "recovered": [3, 4, 5],
    }


if __name__ == "__main__":
    run(main, OVERALL_S)
