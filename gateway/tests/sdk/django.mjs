// The real centrifuge-js SDK against a gateway whose connect and publish proxies
// are the Django views of examples/django-chat. Run by gateway/tests/it/django.rs as
//
//   node django.mjs '{"django":"http://127.0.0.1:P","ws":"ws://127.0.0.1:G/...","room":"lobby","chromium":"/usr/bin/chromium"}'
//
// Three users log in to Django with its login form (CSRF cookie, session cookie);
// the room page and its scripts load, and the proxy views refuse callers
// without the gateway's key.
// alice connects with a JWT from Django's token view, bob with only his session
// cookie through the connect proxy. Messages go through the publish proxy (stored,
// trimmed, rejected when empty or too long; a concurrent burst keeps each
// sender's order), then through the `send` RPC (stored and published in one
// transaction: a concurrent burst is stored in the room's order); a moderator
// edits and deletes through
// a Django view that publishes with `cent`; alice's room page in headless Chromium
// (playwright-core) shows the stored room and sends a message (the send RPC); bob's logout closes his socket, and
// his old cookie is then refused by the connect proxy. Prints one line per step,
// then one JSON line {"ok":true,"messages":[...],"sequential":[...],"delivered":[...]}
// (the room as the clients saw it; ids, and {id, offset}, in offset order) or {"ok":false,"reason":...}; always exits.

import { Centrifuge } from 'centrifuge';
import { chromium } from 'playwright-core';
import WebSocket from 'ws';
import { check, within as withinMs } from './wait.mjs';

const WAIT_MS = 5000;
const within = (promise, what, ms = WAIT_MS) => withinMs(promise, what, ms);
const SEQUENTIAL = 6;
const BURST_EACH = 5;
const MAX_TEXT = 500;
const args = JSON.parse(process.argv[2]);
const channel = `chat:${args.room}`;

function finish(ok, extra) {
  console.log(JSON.stringify(ok ? { ok: true, ...extra } : { ok: false, reason: String(extra) }));
  process.exit(ok ? 0 : 1);
}
setTimeout(() => finish(false, 'overall timeout'), 30000).unref();

/** Resolves once `cond()` holds, checked after each event of `emitter`. */
function until(emitter, event, cond, what) {
  return within(new Promise((resolve) => {
    const test = () => { if (cond()) { emitter.off(event, test); resolve(); } };
    emitter.on(event, test);
    test();
  }), what);
}

/** A user's browser: Django's cookies, kept across requests. */
class Browser {
  constructor(name) {
    this.name = name;
    this.cookies = new Map();
  }

  cookieHeader() {
    return [...this.cookies].map(([k, v]) => `${k}=${v}`).join('; ');
  }

  async fetch(path, init = {}) {
    const headers = { Cookie: this.cookieHeader(), Origin: args.django, ...init.headers };
    const res = await fetch(args.django + path, { ...init, headers, redirect: 'manual' });
    for (const c of res.headers.getSetCookie()) {
      const [pair] = c.split(';');
      const i = pair.indexOf('=');
      this.cookies.set(pair.slice(0, i), pair.slice(i + 1));
    }
    return res;
  }

  /** A form POST with Django's CSRF token. */
  post(path, fields) {
    return this.fetch(path, {
      method: 'POST',
      headers: { 'Content-Type': 'application/x-www-form-urlencoded', 'X-CSRFToken': this.cookies.get('csrftoken') },
      body: new URLSearchParams(fields).toString(),
    });
  }

  async login(password) {
    const page = await this.fetch('/accounts/login/');
    check(page.status === 200 && this.cookies.has('csrftoken'), `login page: HTTP ${page.status}`);
    const res = await this.post('/accounts/login/', { username: this.name, password });
    check(res.status === 302 && this.cookies.has('sessionid'), `${this.name} login: HTTP ${res.status}`);
  }

  /** A `ws` WebSocket class that sends this browser's cookies, as a browser would. */
  webSocket() {
    const cookie = this.cookieHeader();
    return class extends WebSocket {
      constructor(address, protocols) {
        super(address, protocols, { headers: { Cookie: cookie } });
      }
    };
  }
}

/**
 * The room page in headless Chromium with `browser`'s session: it shows the stored
 * messages (the moderator's edit in, the deleted one out), and a message typed
 * there reaches the SDK clients `others` and the page itself.
 */
async function chatInBrowser(browser, others) {
  const chrome = await chromium.launch({ executablePath: args.chromium, headless: true, args: ['--no-sandbox'] });
  try {
    const context = await chrome.newContext();
    const url = new URL(args.django);
    await context.addCookies([...browser.cookies].map(([name, value]) => ({ name, value, domain: url.hostname, path: '/' })));
    const page = await context.newPage();
    await page.goto(`${args.django}/chat/${args.room}/`);
    const shown = () => page.locator('#chat-log li').allTextContents();
    const before = await shown();
    check(before.includes('alice: edited by mod') && !before.includes('bob: message 1'), `the page shows ${before}`);
    await page.fill('#chat-message-input', '  typed in the page  ');
    await page.click('#chat-message-submit');
    await within(page.locator('#chat-log li', { hasText: 'alice: typed in the page' }).waitFor(), 'the page showing its message');
    for (const c of others) {
      await until(c.sub, 'publication', () => c.seen.some((p) => p.data.text === 'typed in the page'), `${c.name}: the page's message`);
    }
    console.log(`the room page in Chromium showed ${before.length} stored messages and sent one that both clients received`);
  } finally {
    await chrome.close();
  }
}

/** A connected client subscribed to the room, recording what it receives. */
async function join(name, options) {
  const client = new Centrifuge(args.ws, options);
  const connected = new Promise((resolve) => client.on('connected', resolve));
  const sub = client.newSubscription(channel, { recoverable: true });
  const seen = [];
  sub.on('publication', (ctx) => seen.push({ offset: ctx.offset, data: ctx.data }));
  sub.subscribe();
  client.connect();
  const ctx = await within(connected, `${name} connected`);
  await within(sub.ready(), `${name} subscribed`);
  return { name, client, sub, seen, ctx };
}

const messages = (c) => c.seen.filter((p) => p.data.type === 'message');
const key = (p) => `${p.offset}:${p.data.type}:${p.data.id}`;

async function main() {
  const [alice, bob, mod] = ['alice', 'bob', 'mod'].map((n) => new Browser(n));
  for (const b of [alice, bob, mod]) await within(b.login('pw'), `${b.name} login`);
  console.log('alice, bob and mod logged in to Django');

  const page = await alice.fetch(`/chat/${args.room}/`);
  const html = await page.text();
  check(page.status === 200 && html.includes(`"${channel}"`) && html.includes(args.ws), `room page: HTTP ${page.status}`);
  for (const path of ['/static/centrifuge/centrifuge.js', '/static/chat/room.js']) {
    const res = await alice.fetch(path);
    check(res.status === 200 && (await res.text()).length > 0, `${path}: HTTP ${res.status}`);
  }
  const anonymous = await new Browser('nobody').fetch(`/chat/${args.room}/`);
  check(anonymous.status === 302, `room page without login: HTTP ${anonymous.status}`);
  for (const path of ['/centrifugo/connect', '/centrifugo/publish', '/centrifugo/connect?key=wrong']) {
    const body = JSON.stringify({ client: 'x', user: '1', channel, data: { text: 'forged' } });
    const res = await alice.fetch(path, { method: 'POST', body, headers: { 'Content-Type': 'application/json' } });
    check(res.status === 403, `${path} without the gateway's key: HTTP ${res.status}`);
  }
  console.log('the room page renders with the SDK from static files; the proxy views refuse calls without the key (403)');

  const getToken = async () => {
    const res = await alice.fetch('/chat/token/');
    check(res.status === 200, `token view: HTTP ${res.status}`);
    return (await res.json()).token;
  };
  const a = await join('alice (JWT)', { websocket: WebSocket, getToken });
  const b = await join('bob (session cookie)', { websocket: bob.webSocket() });
  check(b.ctx.data?.username === 'bob', `connect proxy data ${JSON.stringify(b.ctx.data)}`);
  console.log(`alice connected with Django's JWT; bob through the connect proxy (data ${JSON.stringify(b.ctx.data)})`);

  for (let i = 0; i < SEQUENTIAL; i++) {
    const from = i % 2 ? b : a;
    await within(from.sub.publish({ text: `  message ${i}  ` }), `publish ${i}`);
  }
  for (const [text, what] of [['   ', 'blank'], ['x'.repeat(MAX_TEXT + 1), 'too long']]) {
    const err = await within(a.sub.publish({ text }).then(() => null, (e) => e), `the ${what} publish`);
    check(err?.code === 400, `${what} message: ${JSON.stringify(err)}`);
  }
  console.log('the publish proxy stored the sequential messages and refused a blank and a long one (400)');

  const burst = [];
  for (let i = 0; i < BURST_EACH; i++) {
    for (const from of [a, b]) burst.push(from.sub.publish({ text: `burst ${i} from ${from.name}` }));
  }
  await within(Promise.all(burst), 'the burst');
  const total = SEQUENTIAL + 2 * BURST_EACH;
  for (const c of [a, b]) {
    await until(c.sub, 'publication', () => messages(c).length >= total, `${c.name}: ${total} messages`);
  }

  check(messages(a).map(key).join() === messages(b).map(key).join(), 'alice and bob saw different rooms');
  const ms = messages(a);
  check(ms.length === total, `${ms.length} messages, want ${total}`);
  check(new Set(ms.map((p) => p.data.id)).size === total, 'a stored id was delivered twice');
  check(ms.every((p, i) => i === 0 || p.offset === ms[i - 1].offset + 1), `offsets ${ms.map((p) => p.offset)}`);
  for (let i = 0; i < SEQUENTIAL; i++) {
    const d = ms[i].data;
    check(d.text === `message ${i}` && d.user === (i % 2 ? 'bob' : 'alice'), `message ${i}: ${JSON.stringify(d)}`);
  }
  for (const from of [a, b]) {
    const mine = ms.filter((p) => p.data.text.endsWith(`from ${from.name}`)).map((p) => p.data.text);
    const sent = [...Array(BURST_EACH).keys()].map((i) => `burst ${i} from ${from.name}`);
    check(mine.join() === sent.join(), `${from.name}'s burst in the room: ${mine}`);
  }
  console.log(`both clients saw the same ${total} messages, offsets ${ms[0].offset}..${ms.at(-1).offset}, as Django stored and rewrote them`);

  // The `send` RPC stores and publishes in one transaction: a concurrent burst
  // from four connections (alice and bob, each with a second tab that only sends)
  // is stored in the room's order (checked against SQLite by django.rs), and each
  // reply carries the row's id and the room's offset.
  const tab = async (name, options) => {
    const client = new Centrifuge(args.ws, options);
    client.connect();
    await within(client.ready(), `${name} connected`);
    return { name, client };
  };
  const senders = [a, b, await tab('alice (second tab)', { websocket: WebSocket, getToken }), await tab('bob (second tab)', { websocket: bob.webSocket() })];
  const sends = [];
  for (let i = 0; i < BURST_EACH; i++) {
    for (const from of senders) sends.push(from.client.rpc('send', { room: args.room, text: ` send ${i} from ${from.name}` }));
  }
  const replies = (await within(Promise.all(sends), 'the sends')).map((r) => r.data);
  const all = total + senders.length * BURST_EACH;
  for (const c of [a, b]) {
    await until(c.sub, 'publication', () => messages(c).length >= all, `${c.name}: ${all} messages`);
  }
  check(messages(a).map(key).join() === messages(b).map(key).join(), 'alice and bob saw different sends');
  const sent = messages(a).slice(total);
  check(sent.length === senders.length * BURST_EACH, `${messages(a).length} messages after the sends, want ${all}`);
  const offsetOf = new Map(sent.map((p) => [p.data.id, p.offset]));
  check(replies.every((r) => offsetOf.get(r.id) === r.offset), `send replies ${JSON.stringify(replies)}`);
  for (const from of senders) {
    const mine = sent.filter((p) => p.data.text.endsWith(`from ${from.name}`)).map((p) => p.data.text);
    const want = [...Array(BURST_EACH).keys()].map((i) => `send ${i} from ${from.name}`);
    check(mine.join() === want.join(), `${from.name}'s sends in the room: ${mine}`);
  }
  for (const [method, data, code] of [['send', { room: args.room, text: ' ' }, 400], ['nope', {}, 104]]) {
    const err = await within(a.client.rpc(method, data).then(() => null, (e) => e), `the ${method} rpc`);
    check(err?.code === code, `rpc ${method} ${JSON.stringify(data)}: ${JSON.stringify(err)}`);
  }
  for (const t of senders.slice(2)) t.client.disconnect();
  console.log(`the send RPC stored and published ${sent.length} concurrent messages (offsets ${sent[0].offset}..${sent.at(-1).offset}); a blank send got 400, an unknown method 104`);

  const [edited, deleted] = [ms[0].data.id, ms[1].data.id];
  const denied = await alice.post(`/chat/moderate/${edited}/`, { action: 'delete' });
  check(denied.status === 403, `a non-moderator's delete: HTTP ${denied.status}`);
  const edit = await mod.post(`/chat/moderate/${edited}/`, { action: 'edit', text: 'edited by mod' });
  check(edit.status === 200, `moderator edit: HTTP ${edit.status}`);
  const del = await mod.post(`/chat/moderate/${deleted}/`, { action: 'delete' });
  check(del.status === 200, `moderator delete: HTTP ${del.status}`);
  for (const c of [a, b]) {
    const has = (t, id) => c.seen.some((p) => p.data.type === t && p.data.id === id);
    await until(c.sub, 'publication', () => has('edit', edited) && has('delete', deleted), `${c.name}: the moderator's events`);
  }
  check(a.seen.map(key).join() === b.seen.map(key).join(), 'alice and bob saw different moderator events');
  console.log("the moderator's edit and delete, published by Django with cent, reached both clients");

  await chatInBrowser(alice, [a, b]);

  // The room as the page shows it: the messages with the events applied.
  const room = new Map(messages(a).map((p) => [p.data.id, { ...p.data, offset: p.offset, edited: false }]));
  for (const { data } of a.seen) {
    if (data.type === 'edit') Object.assign(room.get(data.id), { text: data.text, edited: true });
    if (data.type === 'delete') room.delete(data.id);
  }

  const closed = new Promise((resolve) => b.client.on('disconnected', resolve));
  const out = await bob.post('/accounts/logout/', {});
  check(out.status === 302, `logout: HTTP ${out.status}`);
  const bye = await within(closed, "bob's socket closing on logout");
  check(bye.code === 4502, `after logout: ${JSON.stringify(bye)}`);
  console.log(`bob logged out: Django closed his socket through the server API (${bye.code} "${bye.reason}")`);

  const again = new Centrifuge(args.ws, { websocket: bob.webSocket() });
  const refused = new Promise((resolve) => again.on('disconnected', resolve));
  again.connect();
  const r = await within(refused, 'the refused connect');
  check(r.code === 4501 && r.reason === 'login required', `connect with the dead session: ${JSON.stringify(r)}`);
  console.log(`his old session cookie is refused by the connect proxy: ${r.code} "${r.reason}"`);
  a.client.disconnect();
  return {
    messages: [...room.values()].map(({ id, user, text, edited: e, offset }) => ({ id, user, text, edited: e, offset })),
    sequential: ms.slice(0, SEQUENTIAL).map((p) => p.data.id),
    delivered: messages(a).map((p) => ({ id: p.data.id, offset: p.offset })),
  };
}

main().then((result) => finish(true, result), (e) => finish(false, e.message));
