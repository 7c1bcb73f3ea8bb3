// End-to-end tests in chromium of what the client says when it cannot connect: the example
// page, served from its own origin, pointed at a real dispatcher that does not allow that
// origin (CORS), at a port where nothing listens, at a server that accepts connections and
// never answers, and at a host whose WebSocket cannot be opened. Each time the page must show
// `reconnecting` with the cause and the next attempt's time, init() must reject with the
// cause, and the client must keep retrying. tests/tests/integration/browser.rs runs it.
//
// Environment: CHATUP_DISPATCHER_URL (a dispatcher without dispatch.cors_origins, with one
// chat host behind it), CHATUP_ARTIFACTS, CHROMIUM.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:net';

import { Browser, control, need, serveClient, waitStatus } from './support.mjs';

const DISPATCHER = need('CHATUP_DISPATCHER_URL');
const ROOM = 'lobby';
const QUICK = 'reconnectDelay=100&maxReconnectDelay=500&countInterval=0';

/** A TCP server on 127.0.0.1 that accepts connections and never answers. */
function blackHole() {
  const held = [];
  const server = createServer((socket) => held.push(socket));
  server.held = held;
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}

/** A port of 127.0.0.1 where nothing listens (it was free a moment ago). */
async function closedPort() {
  const server = createServer();
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

const browser = new Browser(need('CHATUP_ARTIFACTS'));
let site;
let hole;
let deadPort;
let origin;
before(async () => {
  deadPort = await closedPort();
  // The site also plays a dispatcher that sends pages to a chat host where nothing listens.
  site = await serveClient((request, response) => {
    if (request.method === 'POST' && request.url === `/join/${ROOM}`) {
      const base = `http://127.0.0.1:${deadPort}`;
      const host = { id: 'dead', url: base, sub: `ws://127.0.0.1:${deadPort}/sub/`, pub: `ws://127.0.0.1:${deadPort}/pub`, post: `${base}/pub/` };
      response.writeHead(200, { 'content-type': 'application/json' });
      response.end(JSON.stringify({ host, channel: ROOM, subCount: 0, pubCount: 0, history: [] }));
    } else {
      response.writeHead(404).end();
    }
  });
  origin = `http://127.0.0.1:${site.address().port}`;
  hole = await blackHole();
  await browser.start();
});
after(async () => {
  await browser.finish();
  site.close();
  for (const socket of hole.held) socket.destroy();
  hole.close();
});

/** Opens the example page watching ROOM through `dispatcher`. */
function watch(name, dispatcher, extra = '') {
  return browser.open(name, `${origin}/client/example/?watch=1&room=${ROOM}&dispatcher=${encodeURIComponent(dispatcher)}&${QUICK}${extra}`);
}

/** What init() called (again) in the page gives: 'connected', or the error's code and message. */
function initOutcome(page) {
  return page.evaluate(() => window.chat.init().then(() => 'connected', (e) => ({ name: e.name, code: e.code, message: e.message })));
}

const reason = (page) => page.textContent('#status-reason');

/** Counts the page's `retry` events from now on, in `window.__retries`. */
function countRetries(page) {
  return page.evaluate(() => {
    window.__retries = 0;
    window.chat.on('retry', () => {
      window.__retries += 1;
    });
  });
}

test('a dispatcher that does not allow the page\'s origin: reconnecting, cors_refused naming the setting, connected once allowed', async () => {
  const page = await watch('cors', DISPATCHER);
  await waitStatus(page, 'reconnecting');
  const dispatcher = `${DISPATCHER}/`;
  const expected = `the dispatcher at ${dispatcher} answers, but the browser does not let this page read its answer to POST /join/${ROOM}`;
  assert.ok((await reason(page)).startsWith(expected), await reason(page));
  assert.match(await reason(page), new RegExp(`add "${origin}" to dispatch\\.cors_origins in the dispatcher's config; retrying in \\d+\\.\\d s$`));
  const outcome = await initOutcome(page);
  assert.equal(outcome.name, 'ChatUpError');
  assert.equal(outcome.code, 'cors_refused', outcome.message);
  assert.ok(outcome.message.includes(`add "${origin}" to dispatch.cors_origins`), outcome.message);
  assert.ok(!(await page.evaluate(() => window.__shown)).includes('connected'), 'not connected yet');

  // Allowed now: the retries get through, without reloading the page.
  await control(`allow-origin ${origin}`);
  await waitStatus(page, 'connected');
  assert.equal(await initOutcome(page), 'connected');
  assert.equal(await reason(page), '');
  assert.deepEqual(page.errors, []);
});

test('a dispatcher where nothing listens: reconnecting, unreachable', async () => {
  const dead = `http://127.0.0.1:${deadPort}`;
  const page = await watch('unreachable', dead);
  await waitStatus(page, 'reconnecting');
  assert.match(await reason(page), new RegExp(`^cannot reach the dispatcher at ${dead}/ \\(.+\\): nothing answers there.*; retrying in \\d+\\.\\d s$`));
  const outcome = await initOutcome(page);
  assert.equal(outcome.code, 'unreachable', outcome.message);
  // Still trying: the page asks again and again.
  await countRetries(page);
  await page.waitForFunction(() => window.__retries >= 2);
});

test('a dispatcher that never answers: reconnecting, timeout after requestTimeout', async () => {
  const stuck = `http://127.0.0.1:${hole.address().port}`;
  const page = await watch('timeout', stuck, '&requestTimeout=400');
  await waitStatus(page, 'reconnecting');
  assert.match(await reason(page), new RegExp(`^the dispatcher at ${stuck}/ did not answer POST /join/${ROOM} within 400 ms \\(requestTimeout\\)`));
  const outcome = await initOutcome(page);
  assert.equal(outcome.code, 'timeout', outcome.message);
  // Still trying: each request is given up after requestTimeout and asked again.
  await countRetries(page);
  await page.waitForFunction(() => window.__retries >= 2);
});

test('a host whose WebSocket cannot be opened: reconnecting, host_unreachable', async () => {
  const page = await watch('dead-host', origin);
  await waitStatus(page, 'reconnecting');
  // Over WebSocket first; after a few failures the page tries SSE, then long-poll, which
  // fail the same way.
  const said = await reason(page);
  const sub = `(ws://127.0.0.1:${deadPort}/sub/|http://127.0.0.1:${deadPort}/sub/)`;
  // SSE and poll say what failed after the code (`1006: the SSE stream did not open`).
  assert.match(said, new RegExp(`^the room's (sse |poll )?connection to ${sub} could not be opened \\(1006(: [^)]+)?\\)`), said);
  const outcome = await initOutcome(page);
  assert.equal(outcome.code, 'host_unreachable', outcome.message);
});
