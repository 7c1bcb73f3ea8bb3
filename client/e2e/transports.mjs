// The example page where the WebSocket upgrade cannot be had: without `WebSocket` it chats
// over SSE, without `WebSocket` and `EventSource` over long-poll, and both go through an
// nginx reload without losing or repeating a message. tests/tests/integration/browser.rs
// starts chatup and runs this file.
//
// Environment: CHATUP_URL (nginx), CHATUP_FEED_TOKEN (a publisher token), CHATUP_ARTIFACTS,
// CHROMIUM.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';

import { Browser, assertAllShownOnce, control, feed, need, waitStatus, waitText } from './support.mjs';

const BASE = need('CHATUP_URL');
const FEED_TOKEN = need('CHATUP_FEED_TOKEN');

const browser = new Browser(need('CHATUP_ARTIFACTS'));
before(() => browser.start());
after(() => browser.finish());

/** Publishes `text` to `room` as the feeder, through nginx like a page. */
async function publish(room, text) {
  const response = await fetch(`${BASE}/pub/${room}`, {
    method: 'POST',
    headers: { authorization: `Bearer ${FEED_TOKEN}`, 'content-type': 'text/plain' },
    body: text,
  });
  if (!response.ok) throw new Error(`publish: ${response.status}`);
  return response.json();
}

for (const [transport, missing] of [['sse', ['WebSocket']], ['poll', ['WebSocket', 'EventSource']]]) {
  test(`without ${missing.join(' and ')}, the page chats over ${transport} and loses nothing at a reload`, async () => {
    const room = `no-ws-${transport}`;
    const subscriptions = [];
    const page = await browser.open(`transport-${transport}`, `${BASE}/?name=${transport}-user&room=${room}`, async (page) => {
      await page.addInitScript((names) => {
        for (const name of names) delete window[name];
      }, missing);
      page.on('request', (r) => {
        if (r.url().includes(`/sub/${room}`)) subscriptions.push(r.url());
      });
    });
    await waitStatus(page, 'authenticated');
    assert.equal(await page.evaluate(() => typeof window.WebSocket), 'undefined');
    assert.equal(await page.evaluate(() => window.chat.transport), transport);
    assert.ok(subscriptions.every((u) => u.includes(`transport=${transport}`)), subscriptions.join('\n'));

    // The page says something (POST /pub, there being no publisher WebSocket) and sees it.
    await page.fill('#text', `hello over ${transport}`);
    await page.press('#text', 'Enter');
    await waitText(page, `hello over ${transport}`);

    // Messages keep coming while nginx reloads: each is shown once, in order.
    const feeder = feed((text) => publish(room, text));
    await feeder.until(3);
    await control('reload');
    await feeder.until(feeder.acked.length + 6);
    await feeder.stop();
    await assertAllShownOnce(page, feeder.acked);
    await page.fill('#text', 'after the reload');
    await page.press('#text', 'Enter');
    await waitText(page, 'after the reload');
    assert.deepEqual(page.errors, []);
  });
}
