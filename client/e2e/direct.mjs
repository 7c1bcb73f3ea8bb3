// Direct messages on the example page: two users exchange a message through their own
// private channels (`user.<id>`, opened only by each one's subscribe token), and a third
// cannot watch either channel: the page says it was refused and shows nothing of it.
// tests/tests/integration/browser.rs starts chatup (with private channels and the demo's
// subscribe tokens) and runs this file.
//
// Environment: CHATUP_URL (nginx), CHATUP_ARTIFACTS, CHROMIUM.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';

import { Browser, need, waitStatus, waitText } from './support.mjs';

const BASE = need('CHATUP_URL');

const browser = new Browser(need('CHATUP_ARTIFACTS'));
before(() => browser.start());
after(() => browser.finish());

/** Sends `text` to `to` (a name; empty: the room) from `page`. */
async function say(page, to, text) {
  await page.fill('#to', to);
  await page.fill('#text', text);
  await page.press('#text', 'Enter');
}

test('two users exchange direct messages; a third cannot watch their channels', async () => {
  const room = 'dm-lobby';
  const alice = await browser.open('dm-alice', `${BASE}/?name=Alice&room=${room}`);
  const bob = await browser.open('dm-bob', `${BASE}/?name=Bob&room=${room}`);
  await waitStatus(alice, 'authenticated');
  await waitStatus(bob, 'authenticated');
  // Each page watches its room and its own channel, with a subscribe token in the URL.
  assert.deepEqual(await alice.evaluate(() => window.chat.channels), [room, 'user.alice']);
  assert.equal(await alice.isVisible('#to'), true, 'the "to" field shows with direct messages');

  await say(alice, 'Bob', 'psst, bob');
  // Bob sees it as a direct message to him; Alice sees what she sent.
  await waitText(bob, 'psst, bob');
  const got = await bob.$eval('#messages li.dm:not(.sent)', (li) => ({
    ch: li.dataset.ch,
    from: li.querySelector('.name').textContent,
    text: li.querySelector('.text').textContent,
  }));
  assert.deepEqual(got, { ch: 'user.bob', from: 'Alice', text: 'psst, bob' });
  await waitText(alice, 'psst, bob');
  assert.equal(await alice.$eval('#messages li.dm.sent', (li) => li.dataset.to), 'Bob');

  // Bob answers by clicking her name.
  await bob.click('#messages li.dm .name');
  assert.equal(await bob.inputValue('#to'), 'Alice');
  await bob.fill('#text', 'hi alice');
  await bob.press('#text', 'Enter');
  await waitText(alice, 'hi alice');
  assert.equal(await alice.$eval('#messages li.dm:not(.sent)', (li) => li.dataset.ch), 'user.alice');

  // The room is not private: a message there reaches both, as before.
  await say(alice, '', 'hello room');
  await waitText(bob, 'hello room');

  // Carol tries to watch Bob's channel with her own token: refused before anything of it is
  // sent, and the page says why.
  const carol = await browser.open('dm-carol', `${BASE}/?name=Carol&room=user.bob`);
  await carol.waitForFunction(() => /does not open channel "user\.bob"/.test(document.getElementById('status-reason').textContent
    + document.getElementById('send-error').textContent), null, { timeout: 20_000 });
  const shown = await carol.$$eval('#messages li.message', (items) => items.map((li) => li.textContent));
  assert.deepEqual(shown, [], 'nothing of user.bob reaches Carol');
  // Nor can she read it over a long poll with her token (the server says why).
  const refused = await carol.evaluate(async () => {
    const answer = await fetch('/demo/token', {
      method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name: 'Carol' }),
    }).then((r) => r.json());
    const poll = await fetch(`/sub/user.alice?transport=poll&token=${answer.subscribeToken}`);
    return { status: poll.status, text: await poll.text() };
  });
  assert.equal(refused.status, 403, refused.text);
  assert.match(refused.text, /^forbidden: the subscribe token does not open channel "user\.alice"/);
});
