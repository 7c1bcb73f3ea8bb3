// End-to-end test of host switching in chromium: a room on two chat hosts sharing Redis, a
// dispatcher, and the example page (watching) served from a separate origin. The page's
// host dies (nginx and sidecar killed); the page must ask the dispatcher for another host and
// catch up there, with nothing lost and nothing twice. tests/tests/integration/browser.rs
// runs it.
//
// Environment: CHATUP_DISPATCHER_URL, CHATUP_ADMIN_TOKEN, CHATUP_ARTIFACTS, CHROMIUM.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';

import { Browser, assertAllShownOnce, control, feed, need, serveClient, shownCount, waitShown, waitStatus } from './support.mjs';

const DISPATCHER = need('CHATUP_DISPATCHER_URL');
const ADMIN_TOKEN = need('CHATUP_ADMIN_TOKEN');
const ROOM = 'stage';

const browser = new Browser(need('CHATUP_ARTIFACTS'));
let site;
before(async () => {
  site = await serveClient();
  await browser.start();
});
after(async () => {
  await browser.finish();
  site.close();
});

test('when its host dies, the page moves to another one and catches up', async () => {
  // Admin posts go through the dispatcher straight to Redis, whichever hosts are alive.
  const feeder = feed(async (text) => {
    const response = await fetch(`${DISPATCHER}/post`, {
      method: 'POST',
      headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' },
      body: JSON.stringify({ channel: ROOM, msg: text, user: { name: 'stage manager' } }),
    });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    return (await response.json()).published[0];
  });
  const { port } = site.address();
  const query = `watch=1&room=${ROOM}&dispatcher=${encodeURIComponent(DISPATCHER)}&reconnectDelay=100&maxReconnectDelay=800&countInterval=500`;
  const page = await browser.open('switching-host', `http://127.0.0.1:${port}/client/example/?${query}`);
  await waitStatus(page, 'connected');
  await feeder.until(5);
  // Counts come from the dispatcher, cross-origin (dispatch.cors_origins).
  await page.waitForFunction(() => document.getElementById('viewers').textContent === '1', null, { timeout: 15000 });

  await control('start-second-host');
  const from = await shownCount(page);
  await control('kill-first-host');
  await waitShown(page, 'reconnecting', from);
  await waitShown(page, 'switchingHost', from);
  await waitStatus(page, 'connected');
  await feeder.until(feeder.acked.length + 10);
  await feeder.stop();
  await assertAllShownOnce(page, feeder.acked);

  // The page is on the second host now, the only one left: once the dead host's entry has
  // expired (host.ttl_ms), the dispatcher counts one viewer, there.
  let channel;
  for (let tries = 0; tries < 100; tries++) {
    channel = await (await fetch(`${DISPATCHER}/channels/${ROOM}`)).json();
    if (channel.subCount === 1) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.equal(channel.subCount, 1, JSON.stringify(channel));
  assert.deepEqual(page.errors, []);
});
