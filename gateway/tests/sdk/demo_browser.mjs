// The demo chat page in a real browser: headless Chromium driven by
// playwright-core (pinned in package.json; Debian's chromium, no downloaded
// browser). Run by gateway/tests/it/demo.rs as
//
//   node demo_browser.mjs '<json: {chromium, nodes: [{http, ws, pid}, {...}], screenshot}>'
//
// Node A serves page 1 (alice), node B page 2 (bob); both nodes share Redis and
// each page lists both endpoints, its own first. Checked like a person would:
// the join form by its labels, messages both ways in order, both users online,
// a reload shows the room's history, and when node A is SIGKILLed page 1 moves to
// node B (asking node B for a token: each node signs with its own secret in
// development mode) and shows what bob sent meanwhile, once each and in order;
// bob leaves and alice sees it. With
// `screenshot` set, page 1 is saved as a PNG once both are chatting.
//
// Prints one line per step and a last JSON line {"ok":true,...}; on failure the
// reason, what each page shows and its console, and exits 1. Every wait is bounded.

import { chromium } from 'playwright-core';
import { check } from './wait.mjs';

/** Upper bound for one wait on a page. */
const WAIT_MS = 10000;
/** Failover (3 s of an unreachable endpoint) plus reconnect and recovery. */
const FAILOVER_WAIT_MS = 15000;
/** Upper bound for the whole script. */
const OVERALL_MS = 55000;
const ROOM = 'lobby';

const started = Date.now();
const cfg = JSON.parse(process.argv[2] || '{}');
const logs = { alice: [], bob: [] };
const pageErrors = [];
const pages = {};
let browser = null;

function step(msg) {
  console.log(`[${((Date.now() - started) / 1000).toFixed(2)}s] ${msg}`);
}

/** What a page shows: connection state, members, messages, notices. */
function readPage(page) {
  return page.evaluate(() => {
    const status = document.getElementById('status');
    const items = [...document.querySelectorAll('#messages li')];
    return {
      state: status.dataset.state,
      endpoint: status.dataset.endpoint || '',
      status: status.textContent,
      members: [...document.querySelectorAll('#members li')].map((li) => li.dataset.user),
      count: document.getElementById('member-count').textContent,
      messages: items
        .filter((li) => li.classList.contains('msg'))
        .map((li) => `${li.querySelector('.who').textContent}: ${li.querySelector('.text').textContent}`),
      // Each message's time, as the page gives it to the <time> element.
      times: items
        .filter((li) => li.classList.contains('msg'))
        .map((li) => (li.querySelector('time') || {}).dateTime || ''),
      notices: items.filter((li) => li.classList.contains('notice')).map((li) => li.textContent),
      joinError: document.getElementById('join-error').textContent,
    };
  });
}

async function fail(reason) {
  console.log(`FAIL: ${reason}`);
  for (const [name, page] of Object.entries(pages)) {
    const shown = await Promise.race([
      readPage(page).catch((e) => `unreadable: ${e.message}`),
      new Promise((r) => setTimeout(() => r('unreadable: timed out'), 2000)),
    ]);
    console.error(`--- ${name}'s page ---\n${JSON.stringify(shown, null, 1)}`);
    console.error(`--- ${name}'s console ---\n${logs[name].slice(-40).join('\n')}`);
  }
  if (pageErrors.length) console.error(`--- uncaught page errors ---\n${pageErrors.join('\n')}`);
  console.log(JSON.stringify({ ok: false, reason: String(reason) }));
  if (browser) await Promise.race([browser.close(), new Promise((r) => setTimeout(r, 3000))]);
  process.exit(1);
}

/** Poll what `page` shows until `pred` holds, or fail with what it showed last. */
async function until(name, what, pred, ms = WAIT_MS) {
  const page = pages[name];
  const deadline = Date.now() + ms;
  let last = null;
  for (;;) {
    last = await readPage(page);
    if (pred(last)) return last;
    if (Date.now() > deadline) {
      throw new Error(`${name}: timed out after ${ms} ms waiting for ${what}; last seen ${JSON.stringify(last)}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);

async function openPage(name, node, others) {
  const context = await browser.newContext({ viewport: { width: 1000, height: 700 } });
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT_MS);
  page.on('console', (m) => logs[name].push(`${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => pageErrors.push(`${name}: ${e.message}`));
  pages[name] = page;
  const ws = [node.ws, ...others.map((n) => n.ws)].join(',');
  const resp = await page.goto(`${node.http}/?ws=${encodeURIComponent(ws)}`);
  check(resp && resp.status() === 200, `${name}: GET / answered ${resp && resp.status()}`);
  return page;
}

/** Fill the join form by its labelled fields and press its button, as a person would. */
async function join(name) {
  const page = pages[name];
  await page.getByRole('textbox', { name: 'Nickname', exact: true }).fill(name);
  await page.getByRole('textbox', { name: 'Room', exact: true }).fill(ROOM);
  await page.getByRole('button', { name: 'Join room' }).click();
}

async function say(name, text) {
  const page = pages[name];
  await page.getByRole('textbox', { name: 'Message', exact: true }).fill(text);
  await page.getByRole('textbox', { name: 'Message', exact: true }).press('Enter');
}

async function main() {
  check(cfg.chromium && Array.isArray(cfg.nodes) && cfg.nodes.length === 2, 'usage: node demo_browser.mjs <json config>');
  const [a, b] = cfg.nodes;
  browser = await chromium.launch({ executablePath: cfg.chromium, headless: true, args: ['--no-sandbox'] });
  step(`chromium ${browser.version()}`);

  // 1. alice on node A, then bob on node B; each sees both online.
  await openPage('alice', a, [b]);
  await openPage('bob', b, [a]);
  await join('alice');
  await until('alice', 'connected to node A and in the members list',
    (s) => s.state === 'connected' && s.endpoint === a.ws && s.members.includes('alice'));
  await join('bob');
  for (const name of ['alice', 'bob']) {
    await until(name, 'alice and bob online', (s) => same(s.members, ['alice', 'bob']) && s.count === '2');
  }
  await until('alice', 'the notice that bob joined', (s) => s.notices.includes('bob joined'));
  const bobState = await readPage(pages.bob);
  check(bobState.state === 'connected' && bobState.endpoint === b.ws, `bob is not on node B: ${JSON.stringify(bobState)}`);
  step('1 alice on node A and bob on node B both see alice and bob online; alice saw bob join');

  // 2. Messages both ways, a burst included, in the same order on both pages.
  const expected = [];
  const converse = async (name, text) => {
    await say(name, text);
    expected.push(`${name}: ${text}`);
    for (const who of ['alice', 'bob']) {
      await until(who, `"${text}" after ${expected.length - 1} messages`, (s) => same(s.messages, expected));
    }
  };
  await converse('alice', 'Hi Bob! I am on node A.');
  await converse('bob', 'Hello Alice, node B here. Same room through Redis.');
  await converse('alice', 'Messages show who sent them, and when.');
  await converse('bob', 'And who is online is on the right. Reload: the history comes back.');
  if (cfg.screenshot) {
    await pages.alice.screenshot({ path: cfg.screenshot });
    step(`screenshot: ${cfg.screenshot}`);
  }
  const burst = ['one', 'two', 'three'].map((w) => `burst ${w}`);
  for (const text of burst) {
    await say('bob', text);
    expected.push(`bob: ${text}`);
  }
  for (const who of ['alice', 'bob']) {
    await until(who, 'the burst, in order', (s) => same(s.messages, expected));
  }
  const shown = await readPage(pages.alice);
  check(shown.times.length === shown.messages.length && shown.times.every((t) => !Number.isNaN(Date.parse(t))),
    `a message without its time: ${JSON.stringify(shown.times)}`);
  await converse('bob', '<b>not bold</b> & <script>alert(1)</script>');
  const markup = await pages.alice.evaluate(() => document.querySelectorAll('#messages b, #messages script').length);
  check(markup === 0, 'a message was put in the page as markup');
  step(`2 ${expected.length} messages both ways, in order on both pages, each with its time; markup shown as text`);

  // 3. A reload shows the room's history and rejoins from the address.
  await pages.bob.reload();
  await until('bob', 'the history after a reload',
    (s) => s.state === 'connected' && same(s.messages, expected) && same(s.members, ['alice', 'bob']));
  step('3 bob reloaded: the room\'s history is back, in order, and both are online');

  // 4. Node A dies: alice's page moves to node B and shows what bob sent meanwhile.
  process.kill(a.pid, 'SIGKILL');
  step(`SIGKILL to node A (pid ${a.pid})`);
  await until('alice', 'the connection drop shown as reconnecting', (s) => s.state === 'reconnecting');
  const missed = ['Alice, are you there?', 'Node A is gone.', 'You should get these three.'];
  for (const text of missed) {
    await say('bob', text);
    expected.push(`bob: ${text}`);
  }
  await until('bob', 'the messages sent while alice was away', (s) => same(s.messages, expected));
  const moved = await until('alice', 'node B and the missed messages, once each and in order',
    (s) => s.state === 'connected' && s.endpoint === b.ws && same(s.messages, expected), FAILOVER_WAIT_MS);
  check(moved.notices.some((n) => n.includes('moving to')), `no notice of the move: ${moved.notices}`);
  check(moved.notices.some((n) => n.startsWith('Back: recovering')), `no notice of recovery: ${moved.notices}`);
  step(`4 alice moved to node B and recovered the ${missed.length} messages she missed`);

  await converse('alice', 'Back, through node B.');
  await until('alice', 'both online after the move', (s) => same(s.members, ['alice', 'bob']));
  step('5 alice publishes through node B; both pages agree');

  await pages.bob.getByRole('button', { name: 'Leave room' }).click();
  await until('alice', 'the notice that bob left, and alice alone online',
    (s) => s.notices.includes('bob left') && same(s.members, ['alice']));
  step('6 bob left the room: alice sees the notice and only herself online');

  check(pageErrors.length === 0, `uncaught errors in the pages: ${pageErrors.join('; ')}`);
  await browser.close();
  console.log(JSON.stringify({ ok: true, messages: expected.length, seconds: (Date.now() - started) / 1000 }));
}

const overall = setTimeout(() => fail(`the script took over ${OVERALL_MS} ms`), OVERALL_MS);
main()
  .then(() => {
    clearTimeout(overall);
    process.exit(0);
  })
  .catch((e) => fail(e && e.stack ? e.stack : e));
