// The real centrifuge-js SDK through a load balancer (HAProxy or nginx, with the
// shipped deploy/ configs) in front of three gateway processes on one Redis. Run
// by gateway/tests/it/deploy.rs as
//
//   node proxies.mjs '<json>'
//
// with {name, ws, http, apiKey, tokens: [...], nodes: [{admin, pid}], idleMs,
// kill: <node index>}. Steps:
//   1. /metrics is not served through the proxy.
//   2. The clients connect one after another through the proxy (with a browser's
//      same-origin Origin header) and spread over the three nodes (each node's
//      gateway_connections, read on its admin port).
//   3. Each client publishes once; every client receives every publication, so
//      each crossed from its node to the others.
//   4. Nothing is sent either way on any socket for idleMs (longer than the
//      proxies' default idle timeouts); then a publication through the server API
//      reaches every client on the same connection (no reconnect, same client id).
//   5. A numbered sequence is published through the proxy's /api; after a third of
//      it the process of node `kill` is SIGKILLed. Its clients reconnect through
//      the proxy to the other nodes and recover; every client ends with every
//      acknowledged publication exactly once and in order.
// Prints one line per step, then {"ok":true,...}; on failure the reason and the
// frames of the client concerned, and exits 1. Every wait is bounded.

import { Centrifuge } from 'centrifuge';
import WebSocket from 'ws';
import { check, within as withinMs } from './wait.mjs';

const ROOM = 'deploy';
/** Upper bound for one wait. */
const WAIT_MS = 10000;
const within = (promise, what, ms = WAIT_MS) => withinMs(promise, what, ms);
/** Publications in the sequence of step 5, and the one after which the node dies. */
const SEQ = 60;
const KILL_AFTER = 20;
const SEQ_GAP_MS = 40;

const cfg = JSON.parse(process.argv[2] || '{}');
const started = Date.now();
const label = cfg.name || '?';

function elapsed() {
  return ((Date.now() - started) / 1000).toFixed(3);
}

function step(msg) {
  console.log(`[${label} ${elapsed()}s] ${msg}`);
}

let clients = [];

function fail(reason, who) {
  console.log(`FAIL (${label}): ${reason}`);
  console.error(`FAIL (${label}): ${reason}`);
  for (const c of who ? [who] : clients) {
    console.error(`${c.label}: events ${JSON.stringify(c.events)}`);
    console.error(`${c.label}: frames (${c.frames.length}):\n${c.frames.slice(-40).map((f) => `${f.t}ms ${f.dir} ${f.data}`).join('\n')}`);
  }
  console.log(JSON.stringify({ ok: false, proxy: label, reason: String(reason) }));
  process.exit(1);
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Poll `cond` every 20 ms until true; reject after `ms`. */
async function until(cond, what, ms = WAIT_MS) {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    }
    await sleep(20);
  }
}

async function fetchText(url, init = {}) {
  const r = await fetch(url, { ...init, signal: AbortSignal.timeout(5000) });
  return { status: r.status, body: await r.text() };
}

/** gateway_connections of every node, from its admin port. */
async function connectionsPerNode() {
  const counts = [];
  for (const n of cfg.nodes) {
    if (n.dead) {
      counts.push(0);
      continue;
    }
    const { status, body } = await fetchText(`${n.admin}/metrics`);
    check(status === 200, `${n.admin}/metrics: ${status}`);
    const line = body.split('\n').find((l) => l.startsWith('gateway_connections '));
    check(line, `${n.admin}/metrics has no gateway_connections`);
    counts.push(Number(line.split(' ')[1]));
  }
  return counts;
}

/** POST /api/publish through the proxy; the result, or null when not acknowledged. */
async function apiPublish(data) {
  try {
    const r = await fetch(`${cfg.http}/api/publish`, {
      method: 'POST',
      headers: { 'X-API-Key': cfg.apiKey, 'Content-Type': 'application/json' },
      body: JSON.stringify({ channel: ROOM, data }),
      signal: AbortSignal.timeout(5000),
    });
    const body = await r.json();
    return r.status === 200 && body.result ? body.result : null;
  } catch {
    return null;
  }
}

/** A client with one recoverable subscription, recording its events and frames. */
function makeClient(i, token) {
  const c = { label: `${label}-c${i}`, events: [], frames: [], pubs: [], subscribed: [], connects: [] };
  const note = (dir, data) => c.frames.push({ t: Date.now() - started, dir, data: String(data).slice(0, 300) });
  const origin = cfg.http;
  class RecordingWebSocket extends WebSocket {
    constructor(url, protocols) {
      // A browser page served from the proxy's address sends this Origin; the
      // node accepts it as same-origin only if the proxy kept the Host header.
      super(url, protocols, { headers: { Origin: origin } });
      note('--', `open ${url}`);
      this.addEventListener('message', (e) => note('S->C', e.data));
      this.addEventListener('close', (e) => note('--', `close ${e.code} ${e.reason}`));
    }

    send(data, ...rest) {
      note('C->S', data);
      return super.send(data, ...rest);
    }
  }
  const centrifuge = new Centrifuge(cfg.ws, {
    websocket: RecordingWebSocket,
    token,
    name: c.label,
    minReconnectDelay: 100,
    maxReconnectDelay: 1000,
  });
  c.centrifuge = centrifuge;
  const event = (kind, ctx) => c.events.push({ t: Date.now() - started, kind, ctx });
  centrifuge.on('connecting', (ctx) => event('connecting', ctx));
  centrifuge.on('connected', (ctx) => {
    event('connected', { client: ctx.client });
    c.connects.push(ctx.client);
  });
  centrifuge.on('disconnected', (ctx) => event('disconnected', ctx));
  centrifuge.on('error', (ctx) => event('error', String(ctx.error && ctx.error.message)));
  const sub = centrifuge.newSubscription(ROOM, { recoverable: true });
  c.sub = sub;
  sub.on('subscribing', (ctx) => event('subscribing', ctx));
  sub.on('subscribed', (ctx) => {
    event('subscribed', {
      wasRecovering: ctx.wasRecovering,
      recovered: ctx.recovered,
      streamPosition: ctx.streamPosition,
    });
    c.subscribed.push(ctx);
  });
  sub.on('unsubscribed', (ctx) => event('unsubscribed', ctx));
  sub.on('error', (ctx) => event('sub error', String(ctx.error && ctx.error.message)));
  sub.on('publication', (ctx) => c.pubs.push({ data: ctx.data, offset: ctx.offset }));
  return c;
}

/** Connection losses after the first connect (the SDK also says `connecting` once at the start). */
function reconnects(c) {
  const first = c.events.findIndex((e) => e.kind === 'connected');
  return c.events.slice(first + 1).filter((e) => e.kind === 'connecting' || e.kind === 'disconnected').length;
}

/** Reject if `promise` does not settle within `ms`. */

async function main() {
  check(cfg.ws && cfg.http && cfg.apiKey && cfg.tokens && cfg.nodes, 'usage: node proxies.mjs <json config>');

  // 1. Only the client and API paths are routed.
  const metrics = await fetchText(`${cfg.http}/metrics`);
  check(metrics.status === 404 && !metrics.body.includes('gateway_'), `/metrics through the proxy: ${metrics.status} ${metrics.body.slice(0, 80)}`);
  step('1 /metrics through the proxy: 404');

  // 2. Connect one after another: least-connections spreads them.
  for (const [i, token] of cfg.tokens.entries()) {
    const c = makeClient(i + 1, token);
    clients.push(c);
    c.sub.subscribe();
    c.centrifuge.connect();
    await until(() => c.subscribed.length === 1, `${c.label} connected and subscribed`).catch((e) => fail(e.message, c));
  }
  const spread = await connectionsPerNode();
  check(spread.reduce((a, b) => a + b, 0) === clients.length, `gateway_connections ${spread} != ${clients.length} clients`);
  check(spread.every((n) => n > 0), `clients not spread over every node: ${spread}`);
  step(`2 ${clients.length} clients connected through the proxy; per node: ${spread}`);

  // 3. Every client publishes once; every client receives all of them.
  for (const c of clients) {
    await within(c.sub.publish({ hello: c.label }), `${c.label}: publish`).catch((e) => fail(e.message, c));
  }
  const hellos = clients.map((c) => ({ hello: c.label }));
  for (const c of clients) {
    await until(() => c.pubs.length >= hellos.length, `${c.label}: the ${hellos.length} hellos`).catch((e) => fail(e.message, c));
    const got = c.pubs.map((p) => p.data.hello).sort();
    check(JSON.stringify(got) === JSON.stringify(hellos.map((h) => h.hello).sort()), `${c.label}: hellos ${got}`);
  }
  step('3 every client got every client\'s publication, across the three nodes');

  // 4. Silence on every socket for idleMs, then a publication on the same connections.
  await sleep(200);
  const quietFrom = Date.now() - started;
  const framesBefore = clients.map((c) => c.frames.length);
  const clientIds = clients.map((c) => c.connects[0]);
  step(`4 idle for ${cfg.idleMs} ms`);
  await sleep(cfg.idleMs);
  for (const [i, c] of clients.entries()) {
    if (c.frames.length !== framesBefore[i] || reconnects(c) > 0) {
      fail(`${c.label}: traffic or a reconnect during the ${cfg.idleMs} ms of silence (from ${quietFrom} ms)`, c);
    }
  }
  const afterIdle = await apiPublish({ afterIdle: true });
  check(afterIdle, 'publish through the API after the silence');
  for (const c of clients) {
    await until(() => c.pubs.some((p) => p.data.afterIdle), `${c.label}: the publication after the silence`).catch((e) => fail(e.message, c));
    if (reconnects(c) > 0 || c.connects.length !== 1 || c.connects[0] !== clientIds[clients.indexOf(c)]) {
      fail(`${c.label}: reconnected around the silence (client ids ${c.connects})`, c);
    }
  }
  const silent = Date.now() - started - quietFrom;
  step(`4 after ${silent} ms with no frame on any socket, every client got a publication on its first connection`);

  // 5. A numbered sequence through /api; one node SIGKILLed a third of the way in.
  const before = await connectionsPerNode();
  const victim = cfg.nodes[cfg.kill];
  const onVictim = before[cfg.kill];
  check(onVictim > 0, `no client on node ${cfg.kill}: ${before}`);
  const acked = [];
  for (let n = 1; n <= SEQ; n++) {
    const r = await apiPublish({ n });
    if (r) {
      acked.push({ n, offset: r.offset });
    }
    if (n === KILL_AFTER) {
      process.kill(victim.pid, 'SIGKILL');
      victim.dead = true;
      step(`5 SIGKILL to node ${cfg.kill} (pid ${victim.pid}, ${onVictim} clients) after publication ${n}`);
    }
    await sleep(SEQ_GAP_MS);
  }
  check(acked.length >= SEQ - 3, `only ${acked.length} of ${SEQ} publications acknowledged`);
  const seqOf = (c) => c.pubs.filter((p) => typeof p.data.n === 'number').map((p) => p.data.n);
  const last = acked[acked.length - 1].n;
  for (const c of clients) {
    await until(() => seqOf(c).includes(last), `${c.label}: publication ${last}`, 15000).catch((e) => fail(e.message, c));
  }
  // Whatever else arrives (e.g. a publication whose reply was lost with the node)
  // must not break the order either.
  await sleep(300);
  let moved = 0;
  for (const c of clients) {
    const seq = seqOf(c);
    for (let i = 1; i < seq.length; i++) {
      if (seq[i] <= seq[i - 1]) {
        fail(`${c.label}: ${seq[i]} after ${seq[i - 1]} (duplicate or out of order): ${seq}`, c);
      }
    }
    const missing = acked.filter((a) => !seq.includes(a.n)).map((a) => a.n);
    if (missing.length) {
      fail(`${c.label}: acknowledged publications missing: ${missing}`, c);
    }
    const offsets = c.pubs.map((p) => p.offset);
    for (let i = 1; i < offsets.length; i++) {
      if (offsets[i] !== offsets[i - 1] + 1) {
        fail(`${c.label}: offsets not contiguous: ${offsets}`, c);
      }
    }
    if (reconnects(c) > 0) {
      moved++;
      const resub = c.subscribed[c.subscribed.length - 1];
      if (c.connects.length < 2 || !resub.wasRecovering || !resub.recovered) {
        fail(`${c.label}: lost its node but did not reconnect and recover`, c);
      }
    }
  }
  check(moved === onVictim, `${moved} clients reconnected, ${onVictim} were on the killed node`);
  const now = await connectionsPerNode();
  check(now.reduce((a, b) => a + b, 0) === clients.length, `after the kill, gateway_connections ${now}`);
  step(`5 ${acked.length}/${SEQ} publications acknowledged; the ${moved} clients of the killed node came back (per node now: ${now}) and recovered; every client has each acknowledged publication once, in order`);

  for (const c of clients) {
    c.centrifuge.disconnect();
  }
  console.log(JSON.stringify({ ok: true, proxy: label, clients: clients.length, spread, silentMs: silent, acked: acked.length, moved, ms: Date.now() - started }));
  process.exit(0);
}

process.on('unhandledRejection', (e) => fail(`unhandled rejection: ${e && e.stack ? e.stack : e}`));
setTimeout(() => fail('the whole script took too long'), (cfg.idleMs || 0) + 60000).unref();
main().catch((e) => fail(e && e.message ? e.message : e));
