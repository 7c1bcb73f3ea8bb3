// Subscribe tokens for private channels: the token in the query of every transport, kept
// while it has time left, renewed on 4002, and the refusals a WebSocket or SSE stream cannot
// show learnt from a long poll of the same URL.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ChatUp, ChatUpError, CloseCode, Status, shouldReconnect } from '../src/chatup.js';
import { makeWorld, joinAnswer, msg, waitFor, sleep, client } from './fake.mjs';

/** A JWT-shaped token (unsigned: the client only reads `exp`) ending `inSeconds` from now. */
function token(name, inSeconds = 3600) {
  const payload = { sub: name, channels: ['lobby'] };
  if (inSeconds !== null) payload.exp = Math.floor(Date.now() / 1000) + inSeconds;
  return `eyJhbGciOiJSUzI1NiJ9.${Buffer.from(JSON.stringify(payload)).toString('base64url')}.${name}`;
}

/** A token function giving `tokens` in turn (the last one again when they run out), counting its calls. */
function tokens(...list) {
  const fn = () => {
    fn.calls += 1;
    return list[Math.min(fn.calls, list.length) - 1];
  };
  fn.calls = 0;
  return fn;
}


function withJoin(world) {
  world.route('POST', '/join/lobby', () => joinAnswer('h1'));
  return world;
}

/** The poll requests to the room's viewer URL. */
function polls(world) {
  return world.requests.filter((r) => r.path.startsWith('/sub/lobby?transport=poll'));
}

/** A poll the server holds until the client gives it up. */
function held(request) {
  return new Promise((_, reject) => request.signal.addEventListener('abort', () => reject(new Error('aborted'))));
}

const q = (t) => encodeURIComponent(t);

test('getSubscribeToken must be a function', () => {
  const world = makeWorld();
  assert.throws(() => client(world, { getSubscribeToken: 'abc' }), /getSubscribeToken must be a function/);
  assert.doesNotThrow(() => client(world, { getSubscribeToken: null }));
});

test('the close codes of private channels: 4002 reconnects, 4502/4504/4505 do not', () => {
  assert.equal(CloseCode.SUBSCRIBE_TOKEN_EXPIRED, 4002);
  assert.equal(shouldReconnect(4002), true);
  for (const code of [4502, 4504, 4505]) assert.equal(shouldReconnect(code), false, String(code));
});

test('the token goes in the WebSocket URL, after since', async () => {
  const world = withJoin(makeWorld());
  const t = token('alice');
  const { chat } = client(world, { getSubscribeToken: async () => t });
  const ready = chat.init();
  const ws = await world.nextSocket('/sub/');
  assert.equal(ws.url, `ws://chat.test:8080/sub/lobby?token=${q(t)}`);
  ws.accept();
  await ready;
  ws.push(msg(4, 'hi'));
  ws.serverClose(1001, 'server going away');
  const again = await world.nextSocket('/sub/', 1);
  assert.equal(again.url, `ws://chat.test:8080/sub/lobby?since=lobby:7:4&token=${q(t)}`);
  chat.close();
});

test('the token goes in the SSE URL', async () => {
  const world = withJoin(makeWorld());
  const t = token('alice');
  const { chat } = client(world, { transports: ['sse'], getSubscribeToken: () => t });
  const ready = chat.init();
  const es = await world.nextSocket('/sub/');
  assert.equal(es.kind, 'sse');
  assert.equal(es.url, `http://chat.test:8080/sub/lobby?transport=sse&token=${q(t)}`);
  es.accept();
  await ready;
  chat.close();
});

test('every poll carries the token, after its since', async () => {
  const world = withJoin(makeWorld());
  const t = token('alice');
  let n = 0;
  world.route('GET', '/sub/lobby?transport=poll', (r) => {
    n += 1;
    if (n === 1) return { status: 200, body: { messages: [msg(10, 'a')], since: 'lobby:7:10' } };
    return held(r);
  });
  const { chat, messages } = client(world, { transports: ['poll'], getSubscribeToken: () => t });
  await chat.init();
  await waitFor(() => polls(world).length === 2, 'the second poll');
  assert.deepEqual(polls(world).map((r) => r.path), [
    `/sub/lobby?transport=poll&token=${q(t)}`,
    `/sub/lobby?transport=poll&since=lobby:7:10&token=${q(t)}`,
  ]);
  assert.deepEqual(messages.map((m) => m.id), [10]);
  chat.close();
});

test('a token with time left is kept; one ending within 30 s, or without a readable exp, is asked for again', async () => {
  const world = withJoin(makeWorld());
  const [a1, a2] = [token('a1'), token('a2')];
  const long = tokens(a1, a2);
  const first = client(world, { getSubscribeToken: long });
  first.chat.init().catch(() => {});
  (await world.nextSocket('/sub/')).accept();
  world.sockets[0].serverClose(1001);
  (await world.nextSocket('/sub/', 1)).accept();
  assert.equal(long.calls, 1, 'an hour left: the same token');
  assert.equal(world.sockets[1].url, `ws://chat.test:8080/sub/lobby?token=${q(a1)}`);
  first.chat.close();

  const [b1, b2] = [token('b1', 20), token('b2', 20)];
  const soon = tokens(b1, b2);
  const second = client(world, { getSubscribeToken: soon });
  second.chat.init().catch(() => {});
  (await world.nextSocket('/sub/', 2)).accept();
  world.sockets[2].serverClose(1001);
  const renewed = await world.nextSocket('/sub/', 3);
  assert.equal(soon.calls, 2, '20 s left: a new one');
  assert.equal(renewed.url, `ws://chat.test:8080/sub/lobby?token=${q(b2)}`);
  second.chat.close();

  const opaque = tokens('not-a-jwt-1', 'not-a-jwt-2');
  const third = client(world, { getSubscribeToken: opaque });
  third.chat.init().catch(() => {});
  (await world.nextSocket('/sub/', 4)).accept();
  world.sockets[4].serverClose(1001);
  const next = await world.nextSocket('/sub/', 5);
  assert.equal(opaque.calls, 2, 'no exp to read: asked every attempt');
  assert.equal(next.url, 'ws://chat.test:8080/sub/lobby?token=not-a-jwt-2');
  third.chat.close();
});

test('a token that needs it is escaped in the query', async () => {
  const world = withJoin(makeWorld());
  const { chat } = client(world, { getSubscribeToken: () => 'a+b/c=&d' });
  chat.init().catch(() => {});
  assert.equal((await world.nextSocket('/sub/')).url, 'ws://chat.test:8080/sub/lobby?token=a%2Bb%2Fc%3D%26d');
  chat.close();
});

test('4002: a fresh token and a reconnect at once, resuming with since', async () => {
  const world = withJoin(makeWorld());
  const [t1, t2] = [token('t1'), token('t2')];
  const fn = tokens(t1, t2);
  const { chat, messages, retries } = client(world, { getSubscribeToken: fn, reconnectDelay: 60000, maxReconnectDelay: 60000 });
  const ready = chat.init();
  const ws = await world.nextSocket('/sub/');
  ws.accept();
  await ready;
  ws.push(msg(10, 'before'));
  ws.serverClose(CloseCode.SUBSCRIBE_TOKEN_EXPIRED, 'subscribe token expired');
  const again = await world.nextSocket('/sub/', 1);
  assert.equal(again.url, `ws://chat.test:8080/sub/lobby?since=lobby:7:10&token=${q(t2)}`);
  assert.equal(fn.calls, 2);
  assert.equal(retries.length, 0, 'a renewal, not a failure: no backoff');
  again.accept();
  await sleep(0);
  again.push(msg(10, 'before'));
  again.push(msg(11, 'after'));
  assert.deepEqual(messages.map((m) => m.id), [10, 11]);
  assert.equal(chat.status, Status.CONNECTED);
  chat.close();
});

test('4002 over SSE: the close event renews the token the same way', async () => {
  const world = withJoin(makeWorld());
  const [t1, t2] = [token('t1'), token('t2')];
  const fn = tokens(t1, t2);
  const { chat } = client(world, { transports: ['sse'], getSubscribeToken: fn, reconnectDelay: 60000, maxReconnectDelay: 60000 });
  const ready = chat.init();
  const es = await world.nextSocket('/sub/');
  es.accept();
  await ready;
  await sleep(0);
  es.push(msg(3, 'x'));
  es.serverClose(4002, 'subscribe token expired');
  const again = await world.nextSocket('/sub/', 1);
  assert.equal(again.url, `http://chat.test:8080/sub/lobby?transport=sse&since=lobby:7:3&token=${q(t2)}`);
  chat.close();
});

test('a refused WebSocket, and a long poll of its URL answers 403 forbidden: the client stops with the reason', async () => {
  const world = withJoin(makeWorld());
  const t = token('alice');
  world.route('GET', '/sub/lobby?transport=poll', () => ({ status: 403, body: 'forbidden: the token does not open channel "lobby"\n' }));
  const { chat, statuses } = client(world, { getSubscribeToken: () => t });
  const ready = chat.init();
  (await world.nextSocket('/sub/')).refuse();
  await assert.rejects(ready, (e) => {
    assert.ok(e instanceof ChatUpError);
    assert.equal(e.code, 'forbidden');
    assert.match(e.message, /forbidden: the token does not open channel "lobby"/);
    return true;
  });
  assert.deepEqual(polls(world).map((r) => r.path), [`/sub/lobby?transport=poll&token=${q(t)}`], 'one diagnostic poll, same token');
  assert.equal(chat.status, Status.DISCONNECTED);
  const last = statuses.at(-1);
  assert.equal(last.status, Status.DISCONNECTED);
  assert.match(last.reason, /does not open channel "lobby"/);
  await sleep(20);
  assert.equal(world.socketsTo('/sub/').length, 1, 'no retry');
});

test('a refused SSE stream, and the long poll answers 403 banned: stops with banned', async () => {
  const world = withJoin(makeWorld());
  world.route('GET', '/sub/lobby?transport=poll', () => ({ status: 403, body: 'banned: alice is banned from lobby' }));
  const { chat } = client(world, { transports: ['sse'], getSubscribeToken: () => token('alice') });
  const ready = chat.init();
  (await world.nextSocket('/sub/')).refuse();
  await assert.rejects(ready, (e) => e.code === 'banned' && /alice is banned from lobby/.test(e.message));
});

test('401 token_expired: one retry at once with a fresh token', async () => {
  const world = withJoin(makeWorld());
  const [older, newer] = [token('old'), token('new')];
  const fn = tokens(older, newer);
  world.route('GET', '/sub/lobby?transport=poll', (r) => {
    if (r.path.includes('.old')) return { status: 401, body: 'token_expired: the subscribe token expired', headers: { 'www-authenticate': 'Bearer' } };
    return held(r);
  });
  const { chat, retries } = client(world, { getSubscribeToken: fn, reconnectDelay: 60000, maxReconnectDelay: 60000 });
  const ready = chat.init();
  (await world.nextSocket('/sub/')).refuse();
  const again = await world.nextSocket('/sub/', 1);
  assert.equal(again.url, `ws://chat.test:8080/sub/lobby?token=${q(newer)}`);
  assert.equal(fn.calls, 2);
  assert.equal(retries.length, 0, 'at once, no backoff');
  again.accept();
  await ready;
  chat.close();
});

test('a second 401 in a row stops the client with bad_token and the server\'s reason', async () => {
  const world = withJoin(makeWorld());
  const fn = tokens(token('one'), token('two'), token('three'));
  world.route('GET', '/sub/lobby?transport=poll', () => ({ status: 401, body: 'bad_token: signature does not verify' }));
  const { chat, statuses } = client(world, { getSubscribeToken: fn });
  const ready = chat.init();
  (await world.nextSocket('/sub/')).refuse();
  (await world.nextSocket('/sub/', 1)).refuse();
  await assert.rejects(ready, (e) => e instanceof ChatUpError && e.code === 'bad_token' && /signature does not verify/.test(e.message));
  assert.equal(fn.calls, 2);
  assert.equal(polls(world).length, 2);
  assert.match(statuses.at(-1).reason, /signature does not verify/);
  await sleep(20);
  assert.equal(world.socketsTo('/sub/').length, 2);
});

test('the diagnostic poll is admitted (200): the failure is an ordinary one, retried with backoff', async () => {
  const world = withJoin(makeWorld());
  const t = token('alice');
  world.route('GET', '/sub/lobby?transport=poll', () => ({ status: 200, body: { messages: [], since: '' } }));
  const { chat, retries } = client(world, { getSubscribeToken: () => t });
  chat.init().catch(() => {});
  (await world.nextSocket('/sub/')).refuse();
  const again = await world.nextSocket('/sub/', 1);
  assert.equal(retries.length, 1);
  assert.equal(retries[0].error.code, 'host_unreachable');
  assert.equal(again.url, `ws://chat.test:8080/sub/lobby?token=${q(t)}`);
  chat.close();
});

test('without getSubscribeToken no diagnostic poll is made', async () => {
  const world = withJoin(makeWorld());
  const { chat } = client(world);
  chat.init().catch(() => {});
  (await world.nextSocket('/sub/')).refuse();
  (await world.nextSocket('/sub/', 1)).accept();
  assert.equal(polls(world).length, 0);
  assert.equal(world.sockets[0].url, 'ws://chat.test:8080/sub/lobby');
  chat.close();
});

test('long-poll: a 401 gets a fresh token and a retry, a 403 stops', async () => {
  const world = withJoin(makeWorld());
  const fn = tokens(token('p1'), token('p2'));
  let n = 0;
  world.route('GET', '/sub/lobby?transport=poll', () => {
    n += 1;
    if (n === 1) return { status: 200, body: { messages: [msg(5, 'a')], since: 'lobby:7:5' } };
    return { status: 401, body: 'token_expired: the subscribe token expired' };
  });
  const { chat } = client(world, { transports: ['poll'], getSubscribeToken: fn });
  const ready = chat.init();
  await ready;
  // p1's first poll answers; its next is refused (a held poll answered at expiry): the
  // cached p1 is dropped and p2 asked once; refused too: bad_token.
  const errors = [];
  chat.on('error', (e) => errors.push(e));
  await waitFor(() => chat.status === Status.DISCONNECTED, 'stopped');
  const paths = polls(world).map((r) => r.path);
  assert.equal(paths.length, 3, paths.join('\n'));
  assert.ok(paths[1].includes('.p1') && paths[1].includes('since=lobby:7:5'), paths[1]);
  assert.ok(paths[2].includes('.p2') && paths[2].includes('since=lobby:7:5'), paths[2]);
  assert.equal(fn.calls, 2);
  assert.equal(errors[0].code, 'bad_token');
  assert.match(errors[0].message, /token_expired: the subscribe token expired/);

  const world2 = withJoin(makeWorld());
  world2.route('GET', '/sub/lobby?transport=poll', () => ({ status: 403, body: 'forbidden: the token does not open channel "lobby"' }));
  const other = client(world2, { transports: ['poll'], getSubscribeToken: () => token('q') });
  await assert.rejects(other.chat.init(), (e) => e.code === 'forbidden' && /does not open/.test(e.message));
  assert.equal(polls(world2).length, 1);
});

test('the token function throwing, or giving no string, stops the client with bad_token', async () => {
  const world = withJoin(makeWorld());
  const { chat, statuses } = client(world, {
    getSubscribeToken: async () => {
      throw new Error('the backend is down');
    },
  });
  await assert.rejects(chat.init(), (e) => {
    assert.ok(e instanceof ChatUpError);
    assert.equal(e.code, 'bad_token');
    assert.match(e.message, /the subscribe token function failed: the backend is down/);
    return true;
  });
  assert.equal(world.socketsTo('/sub/').length, 0, 'nothing opened without a token');
  assert.match(statuses.at(-1).reason, /subscribe token function failed/);

  const other = client(world, { getSubscribeToken: () => null });
  await assert.rejects(other.chat.init(), (e) => e.code === 'bad_token' && /subscribe token function failed/.test(e.message));
});
