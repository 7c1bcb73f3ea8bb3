// End-to-end tests of the client and the example page in Debian's chromium, driven by
// playwright-core, against a real chatup (nginx with the module serving the page, the sidecar,
// Redis). tests/tests/integration/browser.rs starts those and runs this file; to stop or kill
// a process this file writes `CONTROL <verb>` on stdout and waits for `OK` on stdin.
//
// Environment (set by browser.rs): CHATUP_URL (nginx), CHATUP_SIDECAR_URL (the sidecar's own
// HTTP port), CHATUP_ADMIN_TOKEN, CHATUP_FEED_TOKEN (a publisher token), CHATUP_ARTIFACTS
// (where screenshots go), CHROMIUM (the browser binary, default /usr/bin/chromium).

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import readline from 'node:readline';

import { chromium } from 'playwright-core';

const BASE = need('CHATUP_URL');
const SIDECAR = need('CHATUP_SIDECAR_URL');
const ADMIN_TOKEN = need('CHATUP_ADMIN_TOKEN');
const FEED_TOKEN = need('CHATUP_FEED_TOKEN');
const ARTIFACTS = need('CHATUP_ARTIFACTS');
const ROOM = 'lobby';
// Short backoff ceilings keep the fault test quick; the defaults are the client's.
const PAGE_QUERY = `room=${ROOM}&reconnectDelay=200&maxReconnectDelay=1500&countInterval=1000`;

function need(name) {
  const value = process.env[name];
  if (!value) {
    console.error(`${name} is not set: run this through \`cargo test -p chatup-tests --test integration browser\``);
    process.exit(2);
  }
  return value;
}

// --- the control channel to the Rust side ----------------------------------------------------

const input = readline.createInterface({ input: process.stdin });
const replies = [];
const waiting = [];
input.on('line', (line) => {
  const resolve = waiting.shift();
  if (resolve) resolve(line);
  else replies.push(line);
});

async function control(verb) {
  process.stdout.write(`CONTROL ${verb}\n`);
  const line = replies.length ? replies.shift() : await new Promise((resolve) => waiting.push(resolve));
  assert.equal(line, 'OK', `CONTROL ${verb}`);
}

// --- pages -------------------------------------------------------------------------------------

let browser;
const pages = new Map();

before(async () => {
  mkdirSync(ARTIFACTS, { recursive: true });
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    // Without the background-networking flags chromium keeps trying to reach Google's hosts.
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
});

after(async () => {
  for (const [name, page] of pages) {
    await page.screenshot({ path: join(ARTIFACTS, `${name}.png`), fullPage: true }).catch(() => {});
  }
  console.log(`screenshots: ${ARTIFACTS}`);
  await browser?.close();
  input.close();
});

/** Opens the example page as `name`, records every status it shows, waits until it can chat. */
async function openChat(name) {
  const context = await browser.newContext({ viewport: { width: 900, height: 700 } });
  const page = await context.newPage();
  page.dialogs = [];
  page.errors = [];
  page.on('dialog', (dialog) => {
    page.dialogs.push(dialog.message());
    dialog.dismiss().catch(() => {});
  });
  page.on('pageerror', (e) => page.errors.push(e.message));
  await page.addInitScript(() => {
    window.__shown = [];
    document.addEventListener('DOMContentLoaded', () => {
      const badge = document.getElementById('status');
      new MutationObserver(() => window.__shown.push(badge.dataset.status)).observe(badge, { attributes: true });
    });
  });
  await page.goto(`${BASE}/?name=${encodeURIComponent(name)}&${PAGE_QUERY}`);
  pages.set(name, page);
  await waitStatus(page, 'authenticated');
  return page;
}

function waitStatus(page, status, timeout = 20000) {
  return page.waitForFunction((s) => document.getElementById('status').dataset.status === s, status, { timeout });
}

/** Waits until the page has shown `status` since the `from`-th recorded change. */
function waitShown(page, status, from = 0, timeout = 20000) {
  return page.waitForFunction(([s, i]) => window.__shown.slice(i).includes(s), [status, from], { timeout });
}

const shownCount = (page) => page.evaluate(() => window.__shown.length);

/** The chat messages listed on the page. */
function listed(page) {
  return page.$$eval('#messages li.message', (items) =>
    items.map((li) => ({ id: Number(li.dataset.id), ep: li.dataset.ep, user: li.dataset.user, text: li.querySelector('.text').textContent })),
  );
}

async function send(page, text) {
  await page.fill('#text', text);
  await page.press('#text', 'Enter');
}

function waitText(page, text, timeout = 20000) {
  return page.waitForFunction(
    (t) => [...document.querySelectorAll('#messages li.message .text')].some((el) => el.textContent === t),
    text,
    { timeout },
  );
}

// --- tests ---------------------------------------------------------------------------------------

test('two pages chat with each other', async () => {
  const alice = await openChat('alice');
  const bob = await openChat('bob');
  await alice.waitForFunction(() => [...document.querySelectorAll('#messages li.notice')].some((li) => li.textContent === 'bob joined'));
  await send(alice, 'hello bob');
  await waitText(bob, 'hello bob');
  await send(bob, 'hi alice');
  await waitText(alice, 'hi alice');
  const seenByAlice = await listed(alice);
  assert.deepEqual(
    seenByAlice.filter((m) => m.text.startsWith('h')).map((m) => [m.user, m.text]),
    [['alice', 'hello bob'], ['bob', 'hi alice']],
  );
  // Counts come from the hosts' reports (every second) through GET /channels/lobby.
  await alice.waitForFunction(() => document.getElementById('chatters').textContent === '2', null, { timeout: 15000 });
  await alice.waitForFunction(() => Number(document.getElementById('viewers').textContent) >= 2, null, { timeout: 15000 });
  // Who is here: the joined users.
  await alice.click('#who');
  await alice.waitForFunction(() => document.querySelectorAll('#user-list li').length === 2);
  const users = await alice.$$eval('#user-list li', (items) => items.map((li) => li.textContent).sort());
  assert.deepEqual(users, ['alice', 'bob']);
});

test('markup in a message is shown as text and runs nothing', async () => {
  const alice = pages.get('alice');
  const bob = pages.get('bob');
  const attack = '<img src=x onerror=alert(1)>';
  await send(alice, attack);
  await waitText(bob, attack);
  await waitText(alice, attack);
  await bob.waitForTimeout(500);
  for (const page of [alice, bob]) {
    assert.equal(await page.locator('#messages img').count(), 0);
    assert.deepEqual(page.dialogs, []);
    assert.deepEqual(page.errors, []);
  }
});

test('the plain-script build works as window.ChatUp', async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(`${BASE}/client/example/`);
  await page.addScriptTag({ url: '/client/dist/chatup.js' });
  const got = await page.evaluate(async (room) => {
    const chat = new window.ChatUp({ dispatcherURL: location.origin, room });
    const seen = [];
    chat.on('message', (m) => seen.push(m.msg));
    await chat.init();
    const status = chat.status;
    chat.close();
    return { status, seen, constant: window.ChatUp.Status.SWITCHING_HOST };
  }, ROOM);
  assert.equal(got.status, 'connected');
  assert.ok(got.seen.includes('hello bob'), `history: ${got.seen}`);
  assert.equal(got.constant, 'switchingHost');
  await context.close();
});

test('stopping the sidecar, then an nginx worker: reconnecting, then caught up, nothing lost or doubled', async () => {
  const alice = pages.get('alice');
  const bob = pages.get('bob');

  // A publisher on the sidecar's own port keeps posting, retrying each message until it is
  // accepted, so some go out while the pages are away.
  const acked = [];
  let feeding = true;
  const feeder = (async () => {
    for (let n = 1; feeding; n++) {
      for (;;) {
        try {
          const response = await fetch(`${SIDECAR}/pub/${ROOM}`, {
            method: 'POST',
            headers: { authorization: `Bearer ${FEED_TOKEN}`, 'content-type': 'text/plain' },
            body: `feed ${n}`,
          });
          if (response.ok) {
            acked.push({ text: `feed ${n}`, ...(await response.json()) });
            break;
          }
        } catch {
          // The sidecar is down: try again.
        }
        await new Promise((r) => setTimeout(r, 100));
      }
      await new Promise((r) => setTimeout(r, 60));
    }
  })();

  const waitAcked = async (n) => {
    while (acked.length < n) await new Promise((r) => setTimeout(r, 20));
  };
  await waitAcked(5);

  let from = await shownCount(alice);
  await control('stop-sidecar');
  await waitShown(alice, 'reconnecting', from);
  await waitShown(bob, 'reconnecting', from);
  await control('start-sidecar');
  await waitStatus(alice, 'authenticated');
  await waitStatus(bob, 'authenticated');

  await waitAcked(acked.length + 5);
  from = await shownCount(alice);
  await control('kill-worker');
  await waitShown(alice, 'reconnecting', from);
  await waitShown(bob, 'reconnecting', from);
  // No worker serves the pages now: these go out while both are away.
  const missed = acked.length;
  await waitAcked(missed + 5);
  const notYetShown = await listed(alice);
  assert.ok(!notYetShown.some((m) => m.text === acked[missed].text), 'published while away');
  await control('restart-worker');
  await waitStatus(alice, 'authenticated');
  await waitStatus(bob, 'authenticated');
  await waitAcked(acked.length + 5);
  feeding = false;
  await feeder;

  // Sending works again.
  await send(alice, 'back again');
  await waitText(bob, 'back again');

  const last = acked.at(-1).text;
  for (const page of [alice, bob]) {
    await waitText(page, last);
    const shown = await listed(page);
    const ids = shown.map((m) => m.id);
    for (let i = 1; i < ids.length; i++) assert.ok(ids[i] > ids[i - 1], `ids in order, none twice: ${ids.join(',')}`);
    const texts = shown.map((m) => m.text);
    for (const m of acked) assert.equal(texts.filter((t) => t === m.text).length, 1, `"${m.text}" shown once`);
    const byId = new Map(shown.map((m) => [m.id, m.text]));
    for (const m of acked) assert.equal(byId.get(m.id), m.text, `id ${m.id}`);
  }
  assert.ok((await alice.evaluate(() => window.__shown)).includes('reconnecting'));
});

test('a banned user\'s page stops sending and says why', async () => {
  const alice = pages.get('alice');
  const bob = pages.get('bob');
  await send(bob, 'a message before the ban');
  await waitText(alice, 'a message before the ban');
  const response = await fetch(`${BASE}/ban`, {
    method: 'POST',
    headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' },
    body: JSON.stringify({ channel: ROOM, users: ['bob'], expire: 600 }),
  });
  assert.equal(response.status, 200, await response.text());

  await waitStatus(bob, 'banned');
  assert.match(await bob.textContent('#status-reason'), /banned from lobby/);
  assert.match(await bob.textContent('#send-error'), /You cannot send here: banned from lobby/);
  assert.equal(await bob.isDisabled('#text'), true);
  assert.equal(await bob.isDisabled('#send'), true);
  const refused = await bob.evaluate(() => window.chat.say('let me in').then(() => 'sent', (e) => e.code));
  assert.equal(refused, 'banned');

  // Other pages hide what the banned user said.
  await alice.waitForFunction(() => [...document.querySelectorAll('#messages li.message.removed')].every((li) => li.dataset.user === 'bob')
    && document.querySelectorAll('#messages li.message.removed').length >= 2);
  assert.equal(await alice.locator('#messages li.message.removed .text', { hasText: 'a message before the ban' }).count(), 0);

  // The page does not try again: still banned a while later, and still receiving.
  await send(alice, 'after the ban');
  await waitText(bob, 'after the ban');
  await bob.waitForTimeout(2000);
  assert.equal(await bob.getAttribute('#status', 'data-status'), 'banned');
  const shown = await bob.evaluate(() => window.__shown);
  assert.equal(shown.at(-1), 'banned');
  assert.equal(shown.filter((s) => s === 'banned').length, 1, `no reconnect after the ban: ${shown.join(',')}`);
});
