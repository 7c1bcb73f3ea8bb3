// The viewer transports: WebSocket, then SSE, then long-poll when the better one keeps
// failing; pinning, remembering, going back to WebSocket later, resume points across
// transports, and publishing by POST without WebSocket.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ChatUp, ChatUpError, Status } from '../src/chatup.js';
import { makeWorld, joinAnswer, msg, waitFor, client } from './fake.mjs';


/** A sessionStorage stand-in. */
function storage() {
  const items = new Map();
  return { getItem: (k) => items.get(k) ?? null, setItem: (k, v) => items.set(k, String(v)), items };
}

function withJoin(world) {
  world.route('POST', '/join/lobby', () => joinAnswer('h1'));
  return world;
}

test('transports: unknown or repeated names are refused at construction', () => {
  const world = makeWorld();
  assert.throws(() => client(world, { transports: ['carrier-pigeon'] }), /transports: "carrier-pigeon" is not one of websocket, sse, poll/);
  assert.throws(() => client(world, { transports: [] }), /non-empty array/);
  assert.throws(() => client(world, { transports: ['sse', 'sse'] }), /must not repeat/);
});

test('a WebSocket that keeps failing gives way to SSE, then SSE to long-poll', async () => {
  const world = withJoin(makeWorld());
  const { chat } = client(world, { transportFailures: 1 });
  const changes = [];
  chat.on('transport', (t) => changes.push(t.transport));
  chat.init().catch(() => {});
  for (let i = 0; i < 2; i++) (await world.nextSocket('/sub/', i)).refuse();
  await waitFor(() => chat.transport === 'sse', 'SSE next');
  for (let i = 2; i < 4; i++) {
    const s = await world.nextSocket('/sub/', i);
    assert.equal(s.kind, 'sse', s.url);
    assert.equal(s.url, 'http://chat.test:8080/sub/lobby?transport=sse');
    s.refuse();
  }
  await waitFor(() => world.requests.some((r) => r.path.startsWith('/sub/lobby?transport=poll')), 'a poll');
  assert.equal(chat.transport, 'poll');
  assert.deepEqual(changes, ['sse', 'poll']);
  chat.close();
});

test('a pinned transport is the only one used, and its reason names it', async () => {
  const world = withJoin(makeWorld());
  const { chat, messages } = client(world, { transports: ['sse'] });
  const statuses = [];
  chat.on('status', (s) => statuses.push(s.reason));
  const ready = chat.init();
  const es = await world.nextSocket('/sub/');
  assert.equal(es.kind, 'sse');
  es.accept();
  await ready;
  assert.ok(statuses.includes('watching over sse'), statuses.join('|'));
  es.push(msg(10, 'hi'));
  // The module ends the stream (a reload): reconnect with since, still over SSE.
  es.serverClose(1001, 'server going away');
  const again = await world.nextSocket('/sub/', 1);
  assert.equal(again.kind, 'sse');
  assert.equal(again.url, 'http://chat.test:8080/sub/lobby?transport=sse&since=lobby:7:10');
  again.accept();
  // Events come as tasks: the stream's handlers are in place by the next one.
  await new Promise((r) => setTimeout(r, 0));
  again.push(msg(10, 'hi'));
  again.push(msg(11, 'there'));
  assert.deepEqual(messages.map((m) => m.id), [10, 11], 'nothing twice');
  chat.close();
});

test('what worked is remembered for the session, and WebSocket is tried again later', async () => {
  const world = withJoin(makeWorld());
  const store = storage();
  const first = client(world, { transportFailures: 0, storage: store, transportRetryAfter: 60000 });
  first.chat.init().catch(() => {});
  (await world.nextSocket('/sub/')).refuse();
  const es = await world.nextSocket('/sub/', 1);
  assert.equal(es.kind, 'sse');
  es.accept();
  es.push(msg(1, 'works'));
  first.chat.close();
  assert.match([...store.items.values()][0], /"transport":"sse"/);

  // A reload of the page: straight to SSE.
  const second = client(world, { storage: store, transportRetryAfter: 60000 });
  second.chat.init().catch(() => {});
  assert.equal((await world.nextSocket('/sub/', 2)).kind, 'sse');
  second.chat.close();

  // Once transportRetryAfter has passed: WebSocket first again.
  const later = client(world, { storage: store, transportRetryAfter: 0 });
  later.chat.init().catch(() => {});
  const ws = await world.nextSocket('/sub/', 3);
  assert.equal(ws.kind, undefined, 'a WebSocket');
  assert.equal(later.chat.transport, 'websocket');
  later.chat.close();
});

test('long-poll delivers each answer, polls with its since, and drops what it already showed', async () => {
  const world = withJoin(makeWorld());
  let polls = 0;
  world.route('GET', '/sub/lobby?transport=poll', (r) => {
    polls += 1;
    if (polls === 1) return { status: 200, body: { messages: [msg(10, 'a'), msg(11, 'b')], since: 'lobby:7:11' } };
    if (polls === 2) {
      assert.equal(r.path, '/sub/lobby?transport=poll&since=lobby:7:11');
      return { status: 200, body: { messages: [msg(11, 'b'), msg(12, 'c')], since: 'lobby:7:12' } };
    }
    // Held until the client gives up on it (close() aborts it).
    return new Promise((_, reject) => r.signal.addEventListener('abort', () => reject(new Error('aborted'))));
  });
  const { chat, messages } = client(world, { transports: ['poll'] });
  await chat.init();
  await waitFor(() => messages.length === 3, 'three messages');
  assert.deepEqual(messages.map((m) => m.id), [10, 11, 12]);
  assert.equal(chat.status, Status.CONNECTED);
  chat.close();
});

test('without WebSocket, say() posts to /pub/<room> with the token and its key', async () => {
  const world = withJoin(makeWorld());
  const posts = [];
  world.route('POST', '/pub/lobby', (r) => {
    posts.push(r);
    if (r.body.msg === 'no') return { status: 403, body: { error: { code: 'banned', message: 'banned from lobby', until: null } } };
    return { status: 200, body: { ch: 'lobby', id: 5, ep: 7 } };
  });
  const token = 'x.' + Buffer.from(JSON.stringify({ _public: { name: 'zoe' } })).toString('base64url') + '.y';
  const { chat } = client(world, { WebSocket: null, transports: ['sse'], jwt: token });
  const ready = chat.init();
  (await world.nextSocket('/sub/')).accept();
  await ready;
  assert.equal(chat.status, Status.AUTHENTICATED);
  assert.deepEqual(chat.user, { name: 'zoe' });
  assert.deepEqual(await chat.say('hello', { idempotencyKey: 'k-1' }), { ch: 'lobby', id: 5, ep: 7 });
  assert.equal(posts[0].headers.Authorization, `Bearer ${token}`);
  assert.equal(posts[0].headers['Idempotency-Key'], 'k-1');
  assert.deepEqual(posts[0].body, { msg: 'hello' });
  await assert.rejects(chat.say('no'), (e) => e instanceof ChatUpError && e.code === 'banned');
  chat.close();
});

test('a close with a code before any message (a reload) does not count against the transport', async () => {
  const world = withJoin(makeWorld());
  const { chat } = client(world, { transportFailures: 0 });
  const ready = chat.init();
  const first = await world.nextSocket('/sub/');
  first.accept();
  await ready;
  first.serverClose(1001, 'server going away');
  const second = await world.nextSocket('/sub/', 1);
  assert.equal(second.kind, undefined, 'a WebSocket again');
  second.accept();
  second.serverClose(1006);
  // Broken before a first message: that one counts, and with transportFailures 0 it moves.
  const third = await world.nextSocket('/sub/', 2);
  assert.equal(third.kind, 'sse');
  chat.close();
});
