// Interoperability check: the real centrifuge-js SDK (npm `centrifuge`, pinned in
// package.json) against a running gateway. Run by gateway/tests/it/sdk.rs as
//
//   node interop.mjs <ws-url> <token-A> <token-B>
//
// The room must keep history (recovery) and presence, and announce joins/leaves.
// Prints one line per step, then one JSON line {"ok":true,...}. On any failure it
// prints the reason and the WebSocket frames exchanged, and exits 1. It always exits.

import { Centrifuge } from 'centrifuge';
import WebSocket from 'ws';
import { check, within as withinMs } from './wait.mjs';

const ROOM = 'chat';
/** Upper bound for any single wait. */
const WAIT_MS = 5000;
const within = (promise, what, ms = WAIT_MS) => withinMs(promise, what, ms);
/** Upper bound for the whole script, so it exits even if something hangs unnoticed. */
const OVERALL_MS = 45000;
/** How long to watch for publications that should not come. */
const QUIET_MS = 300;

const started = Date.now();
const frames = [];
const sdkErrors = [];

function elapsed() {
  return ((Date.now() - started) / 1000).toFixed(3);
}

function step(msg) {
  console.log(`[${elapsed()}s] ${msg}`);
}

function fail(reason) {
  console.log(`FAIL: ${reason}`);
  console.error(`FAIL: ${reason}`);
  if (sdkErrors.length) {
    console.error(`SDK error events:\n${sdkErrors.join('\n')}`);
  }
  console.error(`WebSocket frames (${frames.length}):\n${frames.slice(-300).join('\n')}`);
  console.log(JSON.stringify({ ok: false, reason: String(reason) }));
  process.exit(1);
}

/** JSON with object keys sorted, so that comparisons ignore key order. */
function canonical(v) {
  return JSON.stringify(v, (_, x) =>
    x && typeof x === 'object' && !Array.isArray(x)
      ? Object.fromEntries(Object.keys(x).sort().map((k) => [k, x[k]]))
      : x,
  );
}

function eq(actual, expected, what) {
  const a = canonical(actual);
  const e = canonical(expected);
  check(a === e, `${what}: expected ${e}, got ${a}`);
}

/** Reject if `promise` does not settle within `ms`. */

/** The `sub` claim of a JWT (no verification: the gateway does that). */
function jwtSub(token) {
  const payload = token.split('.')[1];
  check(payload, 'token is not a JWT');
  return JSON.parse(Buffer.from(payload, 'base64url').toString('utf8')).sub;
}

/** A `ws` WebSocket class that records every frame for the failure report. */
function recordingWebSocket(label) {
  const trace = process.env.INTEROP_TRACE === '1';
  const note = (dir, data) => {
    const line = `${elapsed()}s ${label} ${dir} ${data}`;
    frames.push(line);
    if (trace) {
      console.error(line);
    }
  };
  return class extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols);
      note('--', `open ${url}`);
      this.addEventListener('message', (e) => note('S->C', String(e.data)));
      this.addEventListener('close', (e) => note('--', `close ${e.code} ${e.reason}`));
      this.addEventListener('error', (e) => note('--', `error ${e.message}`));
    }

    send(data, ...rest) {
      note('C->S', String(data));
      return super.send(data, ...rest);
    }
  };
}

/** Events of one kind, queued until taken in order; `next` waits (bounded) for one. */
class Inbox {
  constructor(name) {
    this.name = name;
    this.items = [];
    this.waiters = [];
  }

  push(item) {
    const w = this.waiters.shift();
    if (w) {
      w(item);
    } else {
      this.items.push(item);
    }
  }

  next(what = this.name) {
    if (this.items.length) {
      return Promise.resolve(this.items.shift());
    }
    return within(new Promise((resolve) => this.waiters.push(resolve)), what).catch((e) => {
      this.waiters = [];
      throw e;
    });
  }

  /** Take items until one matches `pred`, failing on the timeout. */
  async until(pred, what) {
    for (;;) {
      const item = await this.next(what);
      if (pred(item)) {
        return item;
      }
    }
  }

  /** Assert nothing arrives for `ms`. */
  async quiet(ms, what) {
    await new Promise((r) => setTimeout(r, ms));
    check(this.items.length === 0, `${what}: unexpected ${JSON.stringify(this.items)}`);
  }
}

/** A client with one subscription to ROOM, recording its events. */
function makeClient(label, url, token) {
  const centrifuge = new Centrifuge(url, {
    websocket: recordingWebSocket(label),
    token,
    name: `interop-${label}`,
  });
  const c = {
    label,
    centrifuge,
    connected: new Inbox(`${label} connected`),
    disconnected: new Inbox(`${label} disconnected`),
    subscribed: new Inbox(`${label} subscribed`),
    pubs: new Inbox(`${label} publication`),
    joins: new Inbox(`${label} join`),
    leaves: new Inbox(`${label} leave`),
  };
  centrifuge.on('connected', (ctx) => c.connected.push(ctx));
  centrifuge.on('disconnected', (ctx) => c.disconnected.push(ctx));
  centrifuge.on('error', (ctx) => sdkErrors.push(`${label} client error ${JSON.stringify(ctx)}`));
  const sub = centrifuge.newSubscription(ROOM, { recoverable: true, joinLeave: true });
  c.sub = sub;
  sub.on('subscribed', (ctx) => c.subscribed.push(ctx));
  sub.on('publication', (ctx) => c.pubs.push(ctx));
  sub.on('join', (ctx) => c.joins.push(ctx));
  sub.on('leave', (ctx) => c.leaves.push(ctx));
  sub.on('error', (ctx) => sdkErrors.push(`${label} sub error ${JSON.stringify(ctx)}`));
  sub.on('unsubscribed', (ctx) => sdkErrors.push(`${label} sub unsubscribed ${JSON.stringify(ctx)}`));
  sub.subscribe();
  return c;
}

/** Take the next publication and check it is exactly `data` at `offset` from `from`. */
async function expectPub(c, { data, offset, from }, what) {
  const p = await c.pubs.next(`${c.label}: ${what}`);
  eq(p.data, data, `${c.label}: ${what}: data`);
  eq(p.offset, offset, `${c.label}: ${what}: offset`);
  check(p.info, `${c.label}: ${what}: publication has no info`);
  eq({ user: p.info.user, client: p.info.client }, from, `${c.label}: ${what}: publisher info`);
  return p;
}

async function main() {
  // `<url-A>,<url-B>` puts B on another node of the same cluster.
  const [urls, tokenA, tokenB] = process.argv.slice(2);
  check(urls && tokenA && tokenB, 'usage: node interop.mjs <ws-url>[,<ws-url-B>] <token-A> <token-B>');
  const [url, urlB = url] = urls.split(',');
  const userA = jwtSub(tokenA);
  const userB = jwtSub(tokenB);
  check(userA !== userB, 'the two tokens must be for different users');

  // 1. A connects and subscribes.
  const A = makeClient('A', url, tokenA);
  A.centrifuge.connect();
  const connA = await A.connected.next('A connected');
  check(connA.client, 'A: connected without a client id');
  const subA = await A.subscribed.next('A subscribed');
  eq(
    { recoverable: subA.recoverable, wasRecovering: subA.wasRecovering, recovered: subA.recovered },
    { recoverable: true, wasRecovering: false, recovered: false },
    'A: first subscribed',
  );
  check(subA.streamPosition && subA.streamPosition.epoch, `A: no stream position: ${JSON.stringify(subA)}`);
  eq(subA.streamPosition.offset, 0, 'A: stream top of a new room');
  const epoch = subA.streamPosition.epoch;
  const infoA = { user: userA, client: connA.client };
  step(`1 A connected client=${connA.client} user=${userA}; subscribed ${ROOM} epoch=${epoch} offset=0`);

  // 2. A publishes and receives its own publication.
  const sent = [];
  await within(A.sub.publish({ text: 'hello from A', n: 1 }), 'A publish reply');
  sent.push({ text: 'hello from A', n: 1 });
  await expectPub(A, { data: sent[0], offset: 1, from: infoA }, 'own publication');
  step('2 A published and received its own publication at offset 1');

  // 3. B joins the room and publishes; A sees the join and the publication with B's info.
  const B = makeClient('B', urlB, tokenB);
  B.centrifuge.connect();
  const connB = await B.connected.next('B connected');
  check(connB.client && connB.client !== connA.client, `B: bad client id ${connB.client}`);
  const subB = await B.subscribed.next('B subscribed');
  eq(subB.streamPosition, { offset: 1, epoch }, 'B: stream position at subscribe');
  const infoB = { user: userB, client: connB.client };
  const join = await A.joins.until((j) => j.info.client === connB.client, 'A sees B join');
  eq(join.info.user, userB, 'A: join user');
  await within(B.sub.publish({ text: 'hello from B', n: 2 }), 'B publish reply');
  sent.push({ text: 'hello from B', n: 2 });
  await expectPub(A, { data: sent[1], offset: 2, from: infoB }, "B's publication");
  await expectPub(B, { data: sent[1], offset: 2, from: infoB }, 'own publication');
  step(`3 B connected client=${connB.client} user=${userB}; A saw B join and got B's publication at offset 2`);

  // 4. Presence and presence stats.
  const presence = await within(A.sub.presence(), 'A presence');
  const clients = presence.clients;
  eq(Object.keys(clients).sort(), [connA.client, connB.client].sort(), 'presence: client ids');
  eq({ user: clients[connA.client].user, client: clients[connA.client].client }, infoA, 'presence: A');
  eq({ user: clients[connB.client].user, client: clients[connB.client].client }, infoB, 'presence: B');
  const stats = await within(A.sub.presenceStats(), 'A presence_stats');
  eq(stats, { numClients: 2, numUsers: 2 }, 'presence_stats');
  step('4 presence lists A and B; presence_stats {numClients:2,numUsers:2}');

  // 5. History: offsets 1..n in order, top of stream.
  const history = await within(A.sub.history({ limit: 10 }), 'A history');
  eq(history.publications.map((p) => p.offset), [1, 2], 'history offsets');
  eq(history.publications.map((p) => p.data), sent, 'history data');
  eq({ offset: history.offset, epoch: history.epoch }, { offset: 2, epoch }, 'history top');
  const one = await within(A.sub.history({ limit: 1 }), 'A history limit 1');
  eq(one.publications.map((p) => p.offset), [1], 'history limit 1 offsets');
  step('5 history(limit 10) has offsets [1,2] in order; top offset 2, same epoch; limit 1 gives [1]');

  // 6. A goes away; B sees the leave and presence shrinks.
  A.centrifuge.disconnect();
  await A.disconnected.next('A disconnected');
  await B.leaves.until((l) => l.info.client === connA.client, 'B sees A leave');
  const statsB = await within(B.sub.presenceStats(), 'B presence_stats');
  eq(statsB, { numClients: 1, numUsers: 1 }, 'presence_stats after A left');
  step('6 A disconnected; B saw A leave; presence_stats {numClients:1,numUsers:1}');

  // 7. B publishes three messages while A is away.
  for (let n = 3; n <= 5; n++) {
    const data = { text: `missed ${n}`, n };
    await within(B.sub.publish(data), `B publish ${n}`);
    sent.push(data);
    await expectPub(B, { data, offset: n, from: infoB }, `own publication ${n}`);
  }
  step('7 B published 3 messages (offsets 3..5) while A was away');

  // 8. A reconnects on the same object: the SDK resubscribes with recover.
  A.centrifuge.connect();
  const connA2 = await A.connected.next('A reconnected');
  check(connA2.client && connA2.client !== connA.client, `A: reconnect kept client id ${connA2.client}`);
  const infoA2 = { user: userA, client: connA2.client };
  const resub = await A.subscribed.next('A resubscribed');
  eq(
    {
      wasRecovering: resub.wasRecovering,
      recovered: resub.recovered,
      hasRecoveredPublications: resub.hasRecoveredPublications,
      recoverable: resub.recoverable,
    },
    { wasRecovering: true, recovered: true, hasRecoveredPublications: true, recoverable: true },
    'A: resubscribed',
  );
  check(resub.streamPosition && resub.streamPosition.epoch === epoch, `A: epoch changed: ${JSON.stringify(resub)}`);
  for (let n = 3; n <= 5; n++) {
    await expectPub(A, { data: sent[n - 1], offset: n, from: infoB }, `recovered publication ${n}`);
  }
  await A.pubs.quiet(QUIET_MS, 'A: after the 3 recovered publications');
  step(`8 A reconnected client=${connA2.client}; subscribed wasRecovering=true recovered=true; got offsets 3,4,5 once each`);

  // 9. Live delivery goes on after the recovery, without duplicates.
  const live = { text: 'live after recovery', n: 6 };
  await within(B.sub.publish(live), 'B publish 6');
  sent.push(live);
  await expectPub(A, { data: live, offset: 6, from: infoB }, 'live publication after recovery');
  await A.pubs.quiet(QUIET_MS, 'A: after the live publication');
  const history2 = await within(A.sub.history({ limit: -1 }), 'A history after recovery');
  eq(history2.publications.map((p) => p.offset), [1, 2, 3, 4, 5, 6], 'history offsets after recovery');
  eq(history2.publications.map((p) => p.data), sent, 'history data after recovery');
  step('9 A got the live publication at offset 6, no duplicates; history has offsets 1..6');

  A.centrifuge.disconnect();
  B.centrifuge.disconnect();
  console.log(
    JSON.stringify({
      ok: true,
      sdk: 'centrifuge@5.8.0',
      clientA: connA.client,
      clientA2: infoA2.client,
      clientB: connB.client,
      epoch,
      publications: sent.length,
      recovered: [3, 4, 5],
      ms: Date.now() - started,
    }),
  );
  process.exit(0);
}

process.on('unhandledRejection', (e) => fail(`unhandled rejection: ${e && e.stack ? e.stack : e}`));
setTimeout(() => fail(`the whole script took over ${OVERALL_MS} ms`), OVERALL_MS);
main().catch((e) => fail(e && e.message ? e.message : e));
