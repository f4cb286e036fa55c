// The real centrifuge-js SDK against a gateway whose proxies go to an
// application backend (the one in gateway/tests/it/backend.rs). Run by
// gateway/tests/it/sdk.rs as
//
//   node proxy.mjs <ws-url> <cookie>
//
// The SDK connects with no token (the connect proxy reads the session cookie),
// sees the backend's custom error when a subscription is refused, and receives a
// publication as the publish proxy rewrote it. Prints one line per step, then one
// JSON line {"ok":true} or {"ok":false,"reason":...}; always exits.

import { Centrifuge } from 'centrifuge';
import WebSocket from 'ws';
import { check, within as withinMs } from './wait.mjs';

const WAIT_MS = 5000;
const within = (promise, what, ms = WAIT_MS) => withinMs(promise, what, ms);
const [url, cookie] = process.argv.slice(2);

function finish(ok, reason) {
  console.log(JSON.stringify(ok ? { ok: true } : { ok: false, reason: String(reason) }));
  process.exit(ok ? 0 : 1);
}
setTimeout(() => finish(false, 'overall timeout'), 30000).unref();

/** A `ws` WebSocket that sends the session cookie, as a browser would. */
class CookieWebSocket extends WebSocket {
  constructor(address, protocols) {
    super(address, protocols, { headers: { Cookie: cookie } });
  }
}

async function main() {
  const client = new Centrifuge(url, { websocket: CookieWebSocket });
  const connected = new Promise((resolve) => client.on('connected', resolve));
  client.connect();
  const ctx = await within(connected, 'connected');
  check(JSON.stringify(ctx.data) === JSON.stringify({ welcome: 'alice' }), `connect data ${JSON.stringify(ctx.data)}`);
  console.log(`connected without a token as the backend's user (data ${JSON.stringify(ctx.data)})`);

  const vip = client.newSubscription('vip:lounge');
  const refused = new Promise((resolve) => vip.on('unsubscribed', resolve));
  vip.subscribe();
  const u = await within(refused, 'the refused subscription');
  check(u.code === 4403 && u.reason === 'members only', `unsubscribed ${JSON.stringify(u)}`);
  console.log(`subscription refused by the backend: code ${u.code} "${u.reason}"`);

  const chat = client.newSubscription('mod:chat');
  const got = new Promise((resolve) => chat.on('publication', resolve));
  chat.subscribe();
  await within(chat.ready(), 'mod:chat subscribed');
  await within(chat.publish({ text: 'hello' }), 'publish');
  const p = await within(got, 'the rewritten publication');
  check(p.data.text === 'HELLO' && p.data.by === 'alice', `publication ${JSON.stringify(p.data)}`);
  console.log(`publication as the publish proxy rewrote it: ${JSON.stringify(p.data)}`);
  client.disconnect();
}

main().then(() => finish(true), (e) => finish(false, e.message));
