// The example page as a user sees it with two windows on one room, in Debian's chromium
// driven by playwright-core, against a real chatup set up as `scripts/run` sets it up (nginx
// with two workers serving the page, the sidecar with the memory broker, demo tokens and the
// default plugin chain). tests/tests/integration/browser.rs starts those and runs this file.
//
// Environment: CHATUP_URL (nginx), CHATUP_LEAVE_GRACE_MS (the sidecar's
// presence.leave_grace_ms), CHATUP_ARTIFACTS (where screenshots go), CHROMIUM.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';

import { Browser, need, waitStatus, waitText } from './support.mjs';

const BASE = need('CHATUP_URL');
const LEAVE_GRACE_MS = Number(need('CHATUP_LEAVE_GRACE_MS'));
const ROOM = 'hall';
// The counts' periodic refresh is pushed out of the test: the counts must follow joins and
// leaves, and both pages' own arrival, by themselves.
const QUERY = `room=${ROOM}&countInterval=600000`;

const browser = new Browser(need('CHATUP_ARTIFACTS'));
/** Every request of the pages that failed or was answered with an error. */
const failed = [];
before(() => browser.start());
after(() => browser.finish());

/** Opens the example page as `name` (screenshotted as `example-<shot>.png`), ready to chat. */
async function openChat(name, shot) {
  const page = await browser.open(`example-${shot ?? name}`, `${BASE}/?name=${encodeURIComponent(name)}&${QUERY}`, (page) => {
    page.on('requestfailed', (r) => failed.push(`${name}: ${r.method()} ${r.url()} failed: ${r.failure()?.errorText}`));
    page.on('response', (r) => {
      if (r.status() >= 400) failed.push(`${name}: ${r.request().method()} ${r.url()}: HTTP ${r.status()}`);
    });
  });
  await waitStatus(page, 'authenticated');
  return page;
}

async function send(page, text) {
  await page.fill('#text', text);
  await page.press('#text', 'Enter');
}

/** The join/leave lines on the page: `{text, time}`. */
function presenceLines(page) {
  return page.$$eval('#messages li.notice[data-kind="join"], #messages li.notice[data-kind="leave"]', (items) =>
    items.map((li) => ({ text: li.querySelector('.text')?.textContent ?? li.textContent, time: li.querySelector('.time')?.textContent ?? null })),
  );
}

function whoIsHere(page) {
  return page.$$eval('#user-list li', (items) => items.map((li) => li.textContent).sort());
}

function waitWho(page, names) {
  return page
    .waitForFunction((want) => JSON.stringify([...document.querySelectorAll('#user-list li')].map((li) => li.textContent).sort()) === want,
      JSON.stringify([...names].sort()), { timeout: 15000 })
    .catch(async () => assert.fail(`"Who is here" shows ${JSON.stringify(await whoIsHere(page))}, not ${JSON.stringify(names)}`));
}

function counts(page) {
  return page.evaluate(() => ({ viewers: document.getElementById('viewers').textContent, chatters: document.getElementById('chatters').textContent }));
}

let alice;
let bob;

test('join and leave lines have a time, as messages do', async () => {
  alice = await openChat('alice', 'a');
  bob = await openChat('bob', 'b');
  await alice.waitForFunction(() => [...document.querySelectorAll('#messages li.notice')].some((li) => li.textContent.includes('bob joined')));
  const lines = await presenceLines(alice);
  assert.ok(lines.length >= 2, JSON.stringify(lines));
  for (const line of lines) assert.match(line.time ?? '', /^\d{2}:\d{2}:\d{2}/, `a time on "${line.text}": ${JSON.stringify(lines)}`);
});

test('"Who is here" follows joins and leaves without a reload', async () => {
  await alice.click('#who');
  await waitWho(alice, ['alice', 'bob']);

  const carol = await openChat('carol');
  await waitWho(alice, ['alice', 'bob', 'carol']);
  await carol.context().close();
  browser.pages.delete('example-carol');
  await waitWho(alice, ['alice', 'bob']);

  await alice.waitForFunction(() => [...document.querySelectorAll('#messages li.notice')].some((li) => li.textContent.includes('carol left')), null, { timeout: LEAVE_GRACE_MS + 15000 });
  const lines = await presenceLines(alice);
  const carols = lines.filter((l) => l.text.includes('carol'));
  assert.deepEqual(carols.map((l) => l.text), ['carol joined', 'carol left'], JSON.stringify(lines));
  for (const line of lines) assert.match(line.time ?? '', /^\d{2}:\d{2}:\d{2}/, `a time on "${line.text}": ${JSON.stringify(lines)}`);
});

test('both pages show the same viewer and chatter counts', async () => {
  // Two pages watch and both joined as chatters.
  const want = { viewers: '2', chatters: '2' };
  for (const page of [alice, bob]) {
    await page
      .waitForFunction((w) => document.getElementById('viewers').textContent === w.viewers && document.getElementById('chatters').textContent === w.chatters, want, { timeout: 15000 })
      .catch(() => {});
  }
  const [a, b] = [await counts(alice), await counts(bob)];
  assert.deepEqual(a, b, `alice's page shows ${JSON.stringify(a)}, bob's ${JSON.stringify(b)}`);
  assert.deepEqual(a, want);
});

test('reloading a page makes no left/joined pair on the other one', async () => {
  const before = (await presenceLines(alice)).length;
  await bob.reload();
  await waitStatus(bob, 'authenticated');
  await send(bob, 'back after a reload');
  await waitText(alice, 'back after a reload');
  // A leave is announced only once the grace has passed: wait that long, then a marker.
  await alice.waitForTimeout(LEAVE_GRACE_MS + 1000);
  await send(alice, 'after the grace');
  await waitText(alice, 'after the grace');
  const lines = (await presenceLines(alice)).slice(before);
  assert.deepEqual(lines.map((l) => l.text), [], 'no join or leave lines for a reload');
  assert.deepEqual(await whoIsHere(alice), ['alice', 'bob']);
});

test('sending too fast: one line saying when to try again', async () => {
  // The default rate limit: 10 messages per 10 s per user and room.
  for (let n = 1; n <= 12; n++) {
    await send(bob, `quick ${n}`);
  }
  await bob.waitForFunction(() => document.getElementById('send-error').textContent !== '', null, { timeout: 15000 });
  const shown = await bob.textContent('#send-error');
  assert.match(shown, /try again in \d+ s/, shown);
  assert.equal(shown.match(/try again/g).length, 1, `"try again" once: ${shown}`);
  const errorLines = await bob.$$eval('.error', (items) => items.filter((el) => el.textContent.trim()).length);
  assert.equal(errorLines, 1);
});

test('no request of the pages failed (the favicon included)', async () => {
  // Headless chromium asks for no icon: ask for the one a browser would.
  for (const page of [alice, bob]) {
    const icon = await page.evaluate(() => document.querySelector('link[rel~="icon"]')?.href ?? new URL('/favicon.ico', location.href).href);
    if (/^https?:/.test(icon)) {
      const [response] = await Promise.all([page.waitForResponse(icon), page.evaluate((url) => fetch(url), icon)]);
      assert.ok(response.status() < 400, `the icon ${icon}: HTTP ${response.status()}`);
    }
  }
  for (const page of [alice, bob]) assert.deepEqual(page.errors, []);
  assert.deepEqual(failed, []);
});
