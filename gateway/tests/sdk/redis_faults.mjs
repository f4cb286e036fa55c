// Redis dies under a publish stream and comes back: does every subscriber that
// stays get every publication the cluster acknowledged? Run by
// gateway/tests/it/redis_faults.rs as
//
//   node redis_faults.mjs '{"ws":["ws://127.0.0.1:A/...","ws://127.0.0.1:B/..."],"token":"<jwt>","channel":"room","total":200,"fault_at":60,"max_epochs":2}'
//
// Ten recoverable readers, spread over the nodes, and one publisher on the last
// node that sends `total` publications one after another, retrying each until it
// is acknowledged. Once publication `fault_at` is acknowledged the script prints
// the line `FAULT` and keeps publishing: the test then breaks Redis (kills and
// restarts it, or kills a primary) while the publisher retries. When every
// publication is acknowledged, each reader must hold all of them: once each in
// offset order per epoch, every new epoch from its first offset, in at most
// `max_epochs` epochs, with each change of epoch reported as `recovered: false`
// exactly once.
// Prints one line per step, then one JSON line {"ok":true,...} with the figures,
// or {"ok":false,"reason":...}; always exits.

import { Centrifuge } from 'centrifuge';
import WebSocket from 'ws';
import { check, within } from './wait.mjs';

const READERS = 10;
/** How long the publisher keeps retrying one publication. */
const RETRY_FOR_MS = 40000;
const RETRY_EVERY_MS = 50;
/** How long the readers have to catch up after the last acknowledgement. */
const CATCH_UP_MS = 20000;
const args = JSON.parse(process.argv[2]);

function finish(ok, extra) {
  console.log(JSON.stringify(ok ? { ok: true, ...extra } : { ok: false, reason: String(extra) }));
  process.exit(ok ? 0 : 1);
}
setTimeout(() => finish(false, 'overall timeout'), 110000).unref();

/**
 * Whether a failed publish may succeed when tried again: a server error marked
 * temporary (100 internal: Redis is away), or the SDK's own timeout, transport
 * and connection errors (codes 1, 2, 10, 11), or our `within` bound.
 */
const retryable = (e) => e.temporary === true || [1, 2, 10, 11].includes(e.code) || e.code === undefined;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function client(url) {
  return new Centrifuge(url, { websocket: WebSocket, token: args.token, minReconnectDelay: 100, maxReconnectDelay: 1000 });
}

/** A recoverable subscriber recording what it receives and how it resubscribed. */
async function reader(i) {
  const c = client(args.ws[i % args.ws.length]);
  const sub = c.newSubscription(args.channel, { recoverable: true });
  const r = { i, c, sub, epoch: null, got: [], subscribed: [], unsubscribed: [] };
  // Publications carry no epoch: each belongs to the one its subscribe reply gave.
  sub.on('publication', (ctx) => r.got.push({ n: ctx.data.n, offset: ctx.offset, epoch: r.epoch, at: Date.now() }));
  sub.on('subscribed', (ctx) => {
    r.epoch = ctx.streamPosition?.epoch;
    r.subscribed.push({ recovered: ctx.recovered, wasRecovering: ctx.wasRecovering, epoch: r.epoch });
  });
  sub.on('subscribing', (ctx) => r.unsubscribed.push(ctx.code));
  sub.subscribe();
  c.connect();
  await within(sub.ready(), `reader ${i} subscribed`, 5000);
  return r;
}

async function main() {
  const readers = [];
  for (let i = 0; i < READERS; i++) readers.push(await reader(i));
  // Subscribers may publish: the publisher subscribes too (not recoverable), and
  // its publish waits while that subscription is being re-established.
  const pub = client(args.ws.at(-1));
  const pubSub = pub.newSubscription(args.channel);
  pubSub.subscribe();
  pub.connect();
  await within(pubSub.ready(), 'the publisher subscribed', 5000);
  console.log(`${READERS} readers on ${args.ws.length} nodes; publishing ${args.total}`);

  const acked = [];
  let faultAt = null;
  let firstFailure = null;
  let retries = 0;
  for (let n = 1; n <= args.total; n++) {
    const deadline = Date.now() + RETRY_FOR_MS;
    for (;;) {
      try {
        await within(pubSub.publish({ n }), `publish ${n}`, 5000);
        acked.push(n);
        break;
      } catch (e) {
        check(retryable(e), `publish ${n}: ${JSON.stringify(e)} is not worth a retry`);
        retries++;
        firstFailure ??= { n, at: Date.now(), error: e.message ?? String(e) };
        check(Date.now() < deadline, `publication ${n} not acknowledged within ${RETRY_FOR_MS} ms: ${e.message ?? e}`);
        await sleep(RETRY_EVERY_MS);
      }
    }
    if (n === args.fault_at) {
      faultAt = Date.now();
      console.log('FAULT');
      // Give the test a moment to act before the next publish.
      await sleep(200);
    }
  }
  const lastAck = Date.now();
  console.log(`all ${args.total} acknowledged (${retries} failed attempts retried; first failure ${JSON.stringify(firstFailure)})`);

  const has = (r, n) => r.got.some((p) => p.n === n);
  const caughtUp = () => readers.every((r) => acked.every((n) => has(r, n)));
  const until = Date.now() + CATCH_UP_MS;
  while (!caughtUp() && Date.now() < until) await sleep(50);
  const missing = readers.map((r) => acked.filter((n) => !has(r, n)).length);
  const byReader = readers.map((r) => ({
    reader: r.i,
    missing: acked.filter((n) => !has(r, n)).length,
    unrecovered: r.subscribed.filter((s) => s.wasRecovering && !s.recovered).length,
    resubscribes: r.unsubscribed,
    subscribed: r.subscribed,
    last: r.got.slice(-3),
  }));
  check(missing.every((m) => m === 0), `acknowledged publications missing: ${JSON.stringify(byReader)}`);

  for (const r of readers) {
    // Once each, in order: within an epoch the offsets run without gap or repeat,
    // and every epoch after the first is whole from offset 1 (a publication retried
    // after an attempt that landed unacknowledged may appear twice, at two offsets).
    const epochs = [];
    for (const p of r.got) {
      if (epochs.at(-1)?.epoch !== p.epoch) epochs.push({ epoch: p.epoch, offsets: [] });
      epochs.at(-1).offsets.push(p.offset);
    }
    check(new Set(epochs.map((e) => e.epoch)).size === epochs.length, `reader ${r.i} went back to an epoch`);
    for (const [k, { epoch, offsets }] of epochs.entries()) {
      check(k === 0 || offsets[0] === 1, `reader ${r.i}: epoch ${epoch} starts at offset ${offsets[0]}`);
      check(offsets.every((o, j) => j === 0 || o === offsets[j - 1] + 1), `reader ${r.i}: offsets ${offsets.join(',')} of ${epoch} have a gap or repeat`);
    }
    const unrecovered = r.subscribed.filter((s) => s.wasRecovering && !s.recovered).length;
    check(epochs.length <= args.max_epochs, `reader ${r.i} saw ${epochs.length} epochs, want at most ${args.max_epochs}`);
    check(unrecovered === epochs.length - 1, `reader ${r.i} reported ${unrecovered} gaps over ${epochs.length} epochs: ${JSON.stringify(r.subscribed)}`);
  }
  // The outage as the readers saw it: the longest time without a delivery.
  const quiet = readers.map((r) => {
    let worst = 0;
    for (let k = 1; k < r.got.length; k++) worst = Math.max(worst, r.got[k].at - r.got[k - 1].at);
    return worst;
  });
  const firstAfter = Math.min(...readers.map((r) => r.got.find((p) => p.n > args.fault_at)?.at ?? Infinity));
  const result = {
    acknowledged: acked.length,
    retries,
    missing: missing.reduce((a, b) => a + b, 0),
    reported_gap: readers.map((r) => r.subscribed.filter((s) => s.wasRecovering && !s.recovered).length),
    resubscribe_codes: [...new Set(readers.flatMap((r) => r.unsubscribed))],
    max_quiet_ms: Math.max(...quiet),
    fault_to_first_delivery_ms: firstAfter - faultAt,
    run_ms: lastAck - faultAt,
  };
  console.log(`every reader has all ${acked.length} acknowledged publications; longest silence ${result.max_quiet_ms} ms`);
  for (const r of readers) r.c.disconnect();
  pub.disconnect();
  return result;
}

main().then((result) => finish(true, result), (e) => finish(false, e.message));
