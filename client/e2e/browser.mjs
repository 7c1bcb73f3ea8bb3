// End-to-end tests of the client and the example page in Debian's chromium, driven by
// playwright-core, against a real chatup on one host: nginx with the module serving the page,
// the sidecar with demo tokens, Redis. tests/tests/integration/browser.rs starts those, runs
// this file, and stops or kills processes when asked (support.mjs).
//
// Environment: CHATUP_URL (nginx), CHATUP_SIDECAR_URL (the sidecar's own HTTP port),
// CHATUP_ADMIN_TOKEN, CHATUP_FEED_TOKEN (a publisher token), CHATUP_ARTIFACTS (where
// screenshots go), CHROMIUM (default /usr/bin/chromium).

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';

import { Browser, assertAllShownOnce, control, feed, listed, need, shownCount, waitShown, waitStatus, waitText } from './support.mjs';

const BASE = need('CHATUP_URL');
const SIDECAR = need('CHATUP_SIDECAR_URL');
const ADMIN_TOKEN = need('CHATUP_ADMIN_TOKEN');
const FEED_TOKEN = need('CHATUP_FEED_TOKEN');
const ROOM = 'lobby';
// Short backoff ceilings keep the fault test quick; the defaults are the client's.
const PAGE_QUERY = `room=${ROOM}&reconnectDelay=200&maxReconnectDelay=1500&countInterval=1000`;

const browser = new Browser(need('CHATUP_ARTIFACTS'));
const pages = browser.pages;
before(() => browser.start());
after(() => browser.finish());

/** Opens the example page as `name` and waits until it can chat. */
async function openChat(name) {
  const page = await browser.open(name, `${BASE}/?name=${encodeURIComponent(name)}&${PAGE_QUERY}`);
  await waitStatus(page, 'authenticated');
  return page;
}

async function send(page, text) {
  await page.fill('#text', text);
  await page.press('#text', 'Enter');
}

// --- tests ---------------------------------------------------------------------------------------
test('two pages chat with each other', async () => {
  const alice = await openChat('alice');
  const bob = await openChat('bob');
  await alice.waitForFunction(() => [...document.querySelectorAll('#messages li.notice')].some((li) => li.querySelector('.text')?.textContent === 'bob joined'));
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
  const feeder = feed(async (text) => {
    const response = await fetch(`${SIDECAR}/pub/${ROOM}`, {
      method: 'POST',
      headers: { authorization: `Bearer ${FEED_TOKEN}`, 'content-type': 'text/plain' },
      body: text,
    });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    return response.json();
  });
  const acked = feeder.acked;
  // Each page's own count of statuses shown so far: the two pages' histories differ.
  const shownSoFar = async () => ({ alice: await shownCount(alice), bob: await shownCount(bob) });
  try {
    await feeder.until(5);

    let from = await shownSoFar();
    await control('stop-sidecar');
    await waitShown(alice, 'reconnecting', from.alice);
    await waitShown(bob, 'reconnecting', from.bob);
    await control('start-sidecar');
    await waitStatus(alice, 'authenticated');
    await waitStatus(bob, 'authenticated');

    await feeder.until(acked.length + 5);
    from = await shownSoFar();
    await control('kill-worker');
    try {
      const killedAt = performance.now();
      await waitShown(alice, 'reconnecting', from.alice);
      await waitShown(bob, 'reconnecting', from.bob);
      // No worker serves the pages now: these go out while both are away.
      const missed = await feeder.sentAfter(killedAt, 5);
      const notYetShown = await listed(alice);
      assert.ok(!notYetShown.some((m) => m.text === missed[0].text), `"${missed[0].text}" was published while away`);
    } finally {
      // Even when the above fails, so that the tests after this one have a worker.
      await control('restart-worker');
    }
    await waitStatus(alice, 'authenticated');
    await waitStatus(bob, 'authenticated');
    await feeder.until(acked.length + 5);
    await feeder.stop();

    // Sending works again.
    await send(alice, 'back again');
    await waitText(bob, 'back again');

    for (const page of [alice, bob]) await assertAllShownOnce(page, acked);
    assert.ok((await alice.evaluate(() => window.__shown)).includes('reconnecting'));
  } finally {
    // A failure above must not leave the feeder posting: node would never exit.
    await feeder.stop();
  }
});

test('a banned user\'s page stops sending and says why', async () => {
  const alice = pages.get('alice');
  const bob = pages.get('bob');
  await send(bob, 'a message before the ban');
  await waitText(alice, 'a message before the ban');
  const response = await fetch(`${BASE}/ban`, {
    method: 'POST',
    headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' },
    // Demo tokens have no `sub`: the user is banned by the name the page shows.
    body: JSON.stringify({ channel: ROOM, names: ['bob'], expire: 600 }),
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

test('a temporary ban lifts by itself: the page sends again, without a reload', async () => {
  const alice = pages.get('alice');
  const carol = await openChat('carol');
  const from = await shownCount(carol);
  const response = await fetch(`${BASE}/ban`, {
    method: 'POST',
    headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' },
    body: JSON.stringify({ channel: ROOM, names: ['carol'], expire: 2 }),
  });
  const answer = await response.text();
  assert.equal(response.status, 200, answer);
  const { banned } = JSON.parse(answer);
  assert.deepEqual(banned.map((b) => [b.channel, b.name]), [[ROOM, 'carol']]);
  const until = new Date(banned[0].until).toISOString().replace(/\.\d{3}Z$/, 'Z');

  await waitShown(carol, 'banned', from);
  // Says until when, and may not send meanwhile.
  assert.equal(await carol.textContent('#status-reason'), `banned from ${ROOM} until ${until}`);
  assert.equal(await carol.isDisabled('#text'), true);
  assert.match(await carol.textContent('#send-error'), /You cannot send here: banned from lobby until /);

  // After the ban's end the page is back by itself: input enabled, a message goes out.
  await waitStatus(carol, 'authenticated', 15000);
  assert.ok(Date.now() >= banned[0].until, 'back before the ban ended');
  assert.equal(await carol.isDisabled('#text'), false);
  assert.equal(await carol.textContent('#status-reason'), '');
  assert.equal(await carol.textContent('#send-error'), '');
  await send(carol, 'free to talk again');
  await waitText(alice, 'free to talk again');
  const said = await carol.evaluate(() => window.chat.say('and from the API').then((r) => typeof r.id, (e) => e.code));
  assert.equal(said, 'number');
  await waitText(alice, 'and from the API');
});
