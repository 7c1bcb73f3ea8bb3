import { test } from 'node:test';
import assert from 'node:assert/strict';

import {
  ChatUp,
  ChatUpError,
  ResumePoints,
  Status,
  backoffDelay,
  channelProblem,
  hostEndpoints,
  newIdempotencyKey,
  shouldReconnect,
} from '../src/chatup.js';
import { joinAnswer, makeWorld, msg, sleep, waitFor } from './fake.mjs';

const DISPATCHER = 'http://chat.test:8080';
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

/** A publish frame without its idempotency key (checked to be a UUID). */
function withoutKey(frame) {
  const { key, ...rest } = frame;
  assert.match(key, UUID, `the frame's key: ${JSON.stringify(frame)}`);
  return rest;
}

/** A client on a scripted world with short delays; `statuses` records every status. */
function client(world, options = {}) {
  const chat = new ChatUp({
    dispatcherURL: DISPATCHER,
    room: 'lobby',
    WebSocket: world.WebSocket,
    fetch: world.fetch,
    reconnectDelay: 4,
    maxReconnectDelay: 20,
    random: () => 0.5,
    countInterval: 0,
    countSettle: 0,
    ...options,
  });
  const statuses = [];
  const messages = [];
  const events = [];
  chat.on('status', ({ status }) => statuses.push(status));
  chat.on('message', (m) => messages.push(m));
  chat.on('event', (e) => events.push(e));
  chat.on('error', () => {});
  return { chat, statuses, messages, events };
}

/** Opens the publisher of `world` and authenticates it as `name`; returns the socket. */
async function authenticatePublisher(world, name = 'ann', index = 0) {
  const pub = await world.nextSocket('/pub', index);
  pub.accept();
  await waitFor(() => pub.sent.length === 1, 'the token frame');
  pub.push({ type: 'auth', user: { name } });
  return pub;
}

/** A client of room lobby on host h1, its subscriber open and, with a `jwt`, authenticated. */
async function connected(options = {}) {
  const world = makeWorld();
  world.route('POST', '/join/lobby', () => joinAnswer('h1'));
  const parts = client(world, options);
  const ready = parts.chat.init();
  const sub = await world.nextSocket('/sub/');
  sub.accept();
  const pub = options.jwt ? await authenticatePublisher(world) : null;
  await ready;
  return { world, sub, pub, ...parts };
}

test('backoff is full jitter under a doubling, capped ceiling', () => {
  assert.equal(backoffDelay(1, 500, 30000, () => 0), 0);
  assert.equal(backoffDelay(1, 500, 30000, () => 0.999999), 499);
  assert.equal(backoffDelay(2, 500, 30000, () => 0.999999), 999);
  assert.equal(backoffDelay(4, 500, 30000, () => 0.5), 2000);
  assert.equal(backoffDelay(20, 500, 30000, () => 0.999999), 29999);
  assert.equal(backoffDelay(1000, 500, 30000, () => 0.5), 15000, 'huge attempts do not overflow');
  const spread = new Set(Array.from({ length: 200 }, () => backoffDelay(3, 500, 30000)));
  assert.ok(spread.size > 50, 'delays are spread, not synchronized');
  for (const d of spread) assert.ok(d >= 0 && d < 2000);
});

test('close codes 4500-4999 forbid reconnecting, the others allow it', () => {
  for (const code of [1000, 1001, 1006, 1011, 4000, 4001, 4499]) assert.equal(shouldReconnect(code), true, `${code}`);
  for (const code of [4500, 4501, 4502, 4503, 4999]) assert.equal(shouldReconnect(code), false, `${code}`);
});

test('channel names follow the server rule, with a reason when refused', () => {
  assert.equal(channelProblem('lobby-1.en_US'), null);
  assert.match(channelProblem(''), /empty/);
  assert.match(channelProblem('a'.repeat(65)), /longer than 64/);
  assert.match(channelProblem('a b'), /has " "/);
  assert.match(channelProblem('café'), /has "é"/);
  assert.match(channelProblem(7), /must be a string/);
});

test('the constructor refuses bad options with a clear message', () => {
  const world = makeWorld();
  const make = (o) => new ChatUp({ dispatcherURL: DISPATCHER, room: 'lobby', WebSocket: world.WebSocket, fetch: world.fetch, ...o });
  assert.throws(() => new ChatUp(), /options object/);
  assert.throws(() => make({ room: 'no/slash' }), /room: channel name "no\/slash" has "\/"/);
  assert.throws(() => make({ additionalChannels: ['lobby'] }), /must not repeat/);
  assert.throws(() => make({ additionalChannels: 'news' }), /must be an array/);
  assert.throws(() => make({ dispatcherURL: 42 }), /dispatcherURL must be/);
  assert.throws(() => make({ dispatcherURL: 'not a url' }), /is not a URL/);
  assert.throws(() => make({ jwt: 12 }), /jwt must be/);
  assert.equal(make({}).status, Status.DISCONNECTED);
});

test('host paths become WebSocket URLs of the dispatcher origin, or stay absolute', () => {
  const relative = hostEndpoints({ id: 'a', sub: '/sub/', pub: '/pub' }, 'https://chat.example.com/');
  assert.deepEqual(relative, { id: 'a', sub: 'wss://chat.example.com/sub/', pub: 'wss://chat.example.com/pub' });
  const plain = hostEndpoints({ id: 'b', sub: '/sub/', pub: '/pub' }, 'http://127.0.0.1:8080/');
  assert.equal(plain.sub, 'ws://127.0.0.1:8080/sub/');
  const absolute = hostEndpoints({ id: 'c', sub: 'wss://chat2.example.com/sub/', pub: 'wss://chat2.example.com/pub' }, 'https://chat.example.com/');
  assert.equal(absolute.pub, 'wss://chat2.example.com/pub');
});

test('resume points drop duplicates, follow epochs and build since', () => {
  const points = new ResumePoints();
  assert.equal(points.since(['lobby']), '');
  assert.equal(points.accept(msg(1, 'a')), 'deliver');
  assert.equal(points.accept(msg(2, 'b')), 'deliver');
  assert.equal(points.accept(msg(2, 'b')), 'duplicate');
  assert.equal(points.accept(msg(1, 'a')), 'duplicate');
  assert.equal(points.since(['lobby', 'news']), 'lobby:7:2');
  assert.equal(points.accept({ ch: 'lobby', ev: 'resync', data: { reason: 'epoch_changed', ep: 9 } }), 'resync');
  assert.equal(points.since(['lobby']), 'lobby:9:0');
  assert.equal(points.accept(msg(1, 'new epoch', 9)), 'deliver');
  // A resync that keeps the epoch (cache too short) keeps the position.
  points.accept({ ch: 'lobby', ev: 'resync', data: { reason: 'history_truncated', ep: 9 } });
  assert.equal(points.since(['lobby']), 'lobby:9:1');
  // History that leaves a gap after the position must not be delivered.
  assert.equal(points.historyFits('lobby', [msg(2, 'x', 9), msg(3, 'y', 9)]), true);
  assert.equal(points.historyFits('lobby', [msg(5, 'x', 9)]), false);
  assert.equal(points.historyFits('lobby', [msg(1, 'x', 4)]), false);
  assert.equal(points.historyFits('news', [msg(40, 'x')]), true);
});

test('init joins through the dispatcher, shows history, then resumes after it', async () => {
  const world = makeWorld();
  world.route('POST', '/join/lobby', () => joinAnswer('h1', { history: [msg(41, 'old'), msg(42, 'older?')], subCount: 5, pubCount: 2 }));
  const { chat, statuses, messages } = client(world, { additionalChannels: ['news'] });
  const counts = [];
  chat.on('counts', (c) => counts.push(c));
  const ready = chat.init();
  assert.equal(chat.status, Status.CONNECTING);
  const sub = await world.nextSocket('/sub/');
  assert.equal(sub.url, 'ws://chat.test:8080/sub/lobby/news?since=lobby:7:42');
  sub.accept();
  await ready;
  assert.equal(chat.status, Status.CONNECTED);
  assert.deepEqual(statuses, [Status.CONNECTING, Status.CONNECTED]);
  assert.deepEqual(messages.map((m) => m.id), [41, 42]);
  assert.deepEqual(counts, [{ channel: 'lobby', subCount: 5, pubCount: 2 }]);
  sub.push(msg(42, 'older?'));
  sub.push(msg(43, 'live'));
  sub.push({ ch: 'news', id: 3, ep: 1, t: 1, msg: 'headline' });
  sub.push({ ch: 'elsewhere', id: 1, ep: 1, t: 1, msg: 'not ours' });
  sub.push('not json');
  assert.deepEqual(messages.map((m) => `${m.ch}:${m.id}`), ['lobby:41', 'lobby:42', 'lobby:43', 'news:3']);
  assert.equal(world.requests[0].body, undefined, 'the first join excludes nothing');
  chat.close();
  assert.equal(chat.status, Status.DISCONNECTED);
});

test('a dropped subscriber reconnects with since: nothing lost, nothing twice', async () => {
  const world = makeWorld();
  world.route('POST', '/join/lobby', () => joinAnswer('h1'));
  const { chat, statuses, messages } = client(world);
  const ready = chat.init();
  const first = await world.nextSocket('/sub/');
  assert.equal(first.url, 'ws://chat.test:8080/sub/lobby', 'no history: no since');
  first.accept();
  await ready;
  for (let i = 1; i <= 3; i++) first.push(msg(i, `m${i}`));
  first.serverClose(1001, 'nginx reload');
  await waitFor(() => chat.status === Status.RECONNECTING, 'reconnecting');
  const second = await world.nextSocket('/sub/', 1);
  assert.equal(second.url, 'ws://chat.test:8080/sub/lobby?since=lobby:7:3');
  second.accept();
  await waitFor(() => chat.status === Status.CONNECTED, 'connected again');
  // A server that replays too much is harmless.
  for (let i = 2; i <= 5; i++) second.push(msg(i, `m${i}`));
  assert.deepEqual(messages.map((m) => m.id), [1, 2, 3, 4, 5]);
  // Refused attempts (the host is down) are retried too.
  second.serverClose(1006);
  (await world.nextSocket('/sub/', 2)).refuse();
  const fourth = await world.nextSocket('/sub/', 3);
  assert.equal(fourth.url, 'ws://chat.test:8080/sub/lobby?since=lobby:7:5');
  fourth.accept();
  await waitFor(() => chat.status === Status.CONNECTED, 'connected again');
  assert.deepEqual(statuses, [Status.CONNECTING, Status.CONNECTED, Status.RECONNECTING, Status.CONNECTED, Status.RECONNECTING, Status.CONNECTED]);
  assert.equal(world.requests.filter((r) => r.path.startsWith('/join')).length, 1, 'no host switch for two failures');
  chat.close();
});

test('coming back online cuts a reconnect wait short', async () => {
  const world = makeWorld();
  world.route('POST', '/join/lobby', () => joinAnswer('h1'));
  const network = new EventTarget();
  // A 0.5 × 20 s wait, unless the network says it is back.
  const { chat } = client(world, { network, reconnectDelay: 20000, maxReconnectDelay: 20000 });
  const ready = chat.init();
  const first = await world.nextSocket('/sub/');
  first.accept();
  await ready;
  first.serverClose(1006);
  await waitFor(() => chat.status === Status.RECONNECTING, 'reconnecting');
  await sleep(30);
  assert.equal(world.socketsTo('/sub/').length, 1, 'still waiting');
  network.dispatchEvent(new Event('online'));
  (await world.nextSocket('/sub/', 1)).accept();
  await waitFor(() => chat.status === Status.CONNECTED, 'connected');
  chat.close();
});

test('a resync event moves the position to the new epoch', async () => {
  const world = makeWorld();
  world.route('POST', '/join/lobby', () => joinAnswer('h1', { history: [msg(8, 'before')] }));
  const { chat, messages, events } = client(world);
  const ready = chat.init();
  const sub = await world.nextSocket('/sub/');
  sub.accept();
  await ready;
  sub.push({ ch: 'lobby', ev: 'resync', data: { reason: 'epoch_changed', ep: 99 } });
  sub.push(msg(1, 'fresh', 99));
  sub.serverClose(1011);
  const again = await world.nextSocket('/sub/', 1);
  assert.equal(again.url, 'ws://chat.test:8080/sub/lobby?since=lobby:99:1');
  assert.deepEqual(messages.map((m) => `${m.ep}:${m.id}`), ['7:8', '99:1']);
  assert.equal(events[0].ev, 'resync');
  chat.close();
});

test('repeated failures ask the dispatcher for another host, excluding the failed one', async () => {
  const world = makeWorld();
  world.route('POST', '/join/lobby', (r) => (r.body ? joinAnswer('h2', { base: 'http://chat2.test' }) : joinAnswer('h1')));
  const { chat, statuses, messages } = client(world, { hostFailures: 3 });
  const ready = chat.init();
  const first = await world.nextSocket('/sub/');
  first.accept();
  await ready;
  first.push(msg(10, 'seen'));
  first.serverClose(1006);
  for (let i = 1; i <= 3; i++) (await world.nextSocket('chat.test:8080/sub/', i)).refuse();
  const moved = await world.nextSocket('chat2.test/sub/');
  assert.equal(moved.url, 'ws://chat2.test/sub/lobby?since=lobby:7:10');
  const joins = world.requests.filter((r) => r.path === '/join/lobby');
  assert.deepEqual(joins[1].body, { exclude: ['h1'] });
  moved.accept();
  await waitFor(() => chat.status === Status.CONNECTED, 'connected to h2');
  assert.ok(statuses.includes(Status.SWITCHING_HOST), statuses.join());
  moved.push(msg(11, 'on h2'));
  assert.deepEqual(messages.map((m) => m.id), [10, 11]);
  chat.close();
});

test('no host: the status says so and the client keeps asking', async () => {
  const world = makeWorld();
  let refusals = 2;
  world.route('POST', '/join/lobby', () => {
    if (refusals-- > 0) return { status: 503, body: { error: { code: 'no_host', message: 'no live chat host' } }, headers: { 'retry-after': '1' } };
    return joinAnswer('h1');
  });
  const { chat, statuses } = client(world);
  const ready = chat.init();
  const sub = await world.nextSocket('/sub/');
  sub.accept();
  await ready;
  assert.deepEqual(statuses, [Status.CONNECTING, Status.NO_HOST, Status.CONNECTED]);
  assert.equal(world.requests.filter((r) => r.path === '/join/lobby').length, 3);
  chat.close();
});

test('a bad room answer rejects init and stops', async () => {
  const world = makeWorld();
  world.route('POST', '/join/lobby', () => ({ status: 400, body: { error: { code: 'bad_channel', message: 'nope' } } }));
  const { chat } = client(world);
  await assert.rejects(chat.init(), (e) => e instanceof ChatUpError && e.code === 'bad_channel');
  assert.equal(chat.status, Status.DISCONNECTED);
  assert.equal(world.sockets.length, 0);
});

test('say sends after authentication and settles with the ack or the server error', async () => {
  const world = makeWorld();
  world.route('POST', '/join/lobby', () => joinAnswer('h1'));
  const { chat, statuses } = client(world, { jwt: 'TOKEN-A' });
  const ready = chat.init();
  (await world.nextSocket('/sub/')).accept();
  // Said before the publisher is ready: waits for it.
  const early = chat.say('first');
  const pub = await authenticatePublisher(world);
  assert.equal(pub.url, 'ws://chat.test:8080/pub');
  assert.equal(pub.sent[0], 'TOKEN-A', 'the token is the first frame');
  assert.equal(await ready, chat);
  assert.equal(chat.status, Status.AUTHENTICATED);
  assert.deepEqual(chat.user, { name: 'ann' });
  const frames = pub.frames();
  assert.deepEqual(frames[1], { ref: 1, join: 'lobby' });
  assert.deepEqual(withoutKey(frames[2]), { ref: 2, ch: 'lobby', msg: 'first' });
  pub.push({ type: 'joined', ref: 1, ch: 'lobby' });
  pub.push({ type: 'ack', ref: 2, id: 5, ep: 7 });
  assert.deepEqual(await early, { ch: 'lobby', id: 5, ep: 7 });

  const limited = chat.say('again');
  pub.push({ type: 'error', ref: 3, code: 'rate_limited', message: 'slow down', retryAfter: 4 });
  await assert.rejects(limited, (e) => e.code === 'rate_limited' && e.retryAfter === 4 && e.message === 'slow down');
  const held = chat.say('to the moderators');
  pub.push({ type: 'ack', ref: 4, withheld: true });
  assert.deepEqual(await held, { ch: 'lobby', withheld: true });
  await assert.rejects(chat.say('   '), (e) => e.code === 'empty');
  await assert.rejects(chat.say(12), (e) => e.code === 'bad_request');
  const event = chat.sendEvent('typing', { on: true });
  assert.deepEqual(withoutKey(pub.frames()[5]), { ref: 5, ch: 'lobby', ev: 'typing', data: { on: true } });
  const keys = pub.frames().slice(2).map((f) => f.key);
  assert.equal(new Set(keys).size, keys.length, 'each say() has its own key');
  pub.push({ type: 'error', ref: 5, code: 'events_not_allowed', message: 'no events' });
  await assert.rejects(event, (e) => e.code === 'events_not_allowed');
  assert.deepEqual(statuses, [Status.CONNECTING, Status.CONNECTED, Status.AUTHENTICATED]);
  chat.close();
});

test('say without a token is refused at once', async () => {
  const { world, chat } = await connected();
  await assert.rejects(chat.say('hi'), (e) => e.code === 'not_authenticated');
  assert.equal(world.socketsTo('/pub').length, 0);
  chat.close();
});

test('a publisher drop: in-flight messages go again with their key after re-auth, before queued ones', async () => {
  const { world, chat, statuses, pub } = await connected({ jwt: 'T' });
  const lost = chat.say('in flight');
  const sent = pub.frames().find((f) => f.msg === 'in flight');
  pub.serverClose(1001, 'server shutting down');
  await waitFor(() => chat.status === Status.RECONNECTING, 'reconnecting');
  const queued = chat.say('queued');
  const again = await authenticatePublisher(world, 'ann', 1);
  await waitFor(() => again.frames().some((f) => f.msg === 'queued'), 'the queued message');
  const resent = again.frames().filter((f) => f.msg !== undefined);
  assert.deepEqual(resent.map((f) => f.msg), ['in flight', 'queued'], 'in say() order');
  assert.equal(resent[0].key, sent.key, 'the same key: the server publishes it once');
  assert.notEqual(resent[1].key, sent.key);
  // The first attempt had gone out after all: the server says so with the first id.
  again.push({ type: 'ack', ref: resent[0].ref, id: 8, ep: 7, duplicate: true });
  again.push({ type: 'ack', ref: resent[1].ref, id: 9, ep: 7 });
  assert.deepEqual(await lost, { ch: 'lobby', id: 8, ep: 7, duplicate: true });
  assert.deepEqual(await queued, { ch: 'lobby', id: 9, ep: 7 });
  assert.equal(chat.status, Status.AUTHENTICATED);
  assert.deepEqual(statuses.slice(-2), [Status.RECONNECTING, Status.AUTHENTICATED]);
  chat.close();
});

test('unavailable: the same frame goes again after a wait, until acked', async () => {
  const { chat, pub } = await connected({ jwt: 'T' });
  const said = chat.say('through the outage');
  const attempts = () => pub.frames().filter((f) => f.msg === 'through the outage');
  for (let n = 1; n <= 3; n++) {
    await waitFor(() => attempts().length === n, `attempt ${n}`);
    pub.push({ type: 'error', ref: attempts()[n - 1].ref, code: 'unavailable', message: 'the message broker is unavailable' });
  }
  await waitFor(() => attempts().length === 4, 'attempt 4');
  const all = attempts();
  assert.equal(new Set(all.map((f) => f.key)).size, 1, 'one key for every attempt');
  assert.equal(new Set(all.map((f) => f.ref)).size, 4, 'a ref per attempt');
  pub.push({ type: 'ack', ref: all[3].ref, id: 3, ep: 7, duplicate: true });
  assert.deepEqual(await said, { ch: 'lobby', id: 3, ep: 7, duplicate: true });
  // Other errors are final.
  const refused = chat.say('too much');
  await waitFor(() => pub.frames().some((f) => f.msg === 'too much'), 'the frame');
  pub.push({ type: 'error', ref: pub.frames().at(-1).ref, code: 'rate_limited', message: 'slow down', retryAfter: 2 });
  await assert.rejects(refused, (e) => e.code === 'rate_limited');
  assert.equal(pub.frames().filter((f) => f.msg === 'too much').length, 1);
  chat.close();
});

test('a timeout gives the key to say again with; a given key is used and checked', async () => {
  const { chat, pub } = await connected({ jwt: 'T', sendTimeout: 150 });
  const slow = chat.say('no answer');
  let error;
  await slow.catch((e) => {
    error = e;
  });
  assert.equal(error.code, 'timeout');
  const sent = pub.frames().find((f) => f.msg === 'no answer');
  assert.equal(error.idempotencyKey, sent.key);
  assert.match(error.message, /idempotencyKey/);
  // Saying it again with the key: the frame carries it, and the answer may be the first one's.
  const again = chat.say('no answer', { idempotencyKey: error.idempotencyKey });
  await waitFor(() => pub.frames().filter((f) => f.msg === 'no answer').length === 2, 'the retry');
  const retry = pub.frames().at(-1);
  assert.equal(retry.key, sent.key);
  pub.push({ type: 'ack', ref: retry.ref, id: 4, ep: 7, duplicate: true });
  assert.deepEqual(await again, { ch: 'lobby', id: 4, ep: 7, duplicate: true });
  // The last error before a timeout is named.
  const down = chat.say('down');
  await waitFor(() => pub.frames().some((f) => f.msg === 'down'), 'the frame');
  pub.push({ type: 'error', ref: pub.frames().at(-1).ref, code: 'unavailable', message: 'broker down' });
  await assert.rejects(down, (e) => e.code === 'timeout' && /unavailable: broker down/.test(e.message) && e.idempotencyKey !== null);
  for (const bad of ['', 'a b', 'x'.repeat(65), 7]) {
    await assert.rejects(chat.say('x', { idempotencyKey: bad }), (e) => e.code === 'bad_idempotency_key');
  }
  assert.equal(pub.frames().filter((f) => f.msg === 'x').length, 0);
  chat.close();
});

test('idempotency keys are UUIDs, with or without crypto.randomUUID', () => {
  assert.match(newIdempotencyKey(), UUID);
  assert.equal(newIdempotencyKey({ randomUUID: () => 'from-crypto' }), 'from-crypto');
  const fill = { getRandomValues: (bytes) => bytes.fill(0xff) };
  assert.equal(newIdempotencyKey(fill), 'ffffffff-ffff-4fff-bfff-ffffffffffff');
  assert.equal(newIdempotencyKey(null, () => 0), '00000000-0000-4000-8000-000000000000');
  assert.notEqual(newIdempotencyKey(), newIdempotencyKey());
});

test('banned (4502): never reconnects, refuses to send, keeps receiving', async () => {
  const { world, chat, statuses, messages, sub, pub } = await connected({ jwt: 'T' });
  let reason = '';
  chat.on('status', (s) => {
    if (s.status === Status.BANNED) reason = s.reason;
  });
  const pending = chat.say('last words');
  pub.serverClose(4502, 'banned from lobby');
  // Unanswered when the ban closed the socket: it is not sent again.
  await assert.rejects(pending, (e) => e.code === 'banned');
  assert.equal(chat.status, Status.BANNED);
  assert.equal(reason, 'banned from lobby');
  await assert.rejects(chat.say('more'), (e) => e.code === 'banned' && e.message === 'banned from lobby');
  await sleep(60);
  assert.equal(world.socketsTo('/pub').length, 1, 'no new publisher socket');
  sub.push({ ch: 'lobby', id: 1, ep: 7, t: 1, ev: 'rmUserMsg', data: 'ann' });
  sub.push(msg(2, 'others still talk'));
  assert.equal(messages.length, 1);
  assert.equal(statuses.at(-1), Status.BANNED);
  chat.close();
});

test('a join refused as banned shows banned and refuses to send', async () => {
  const { chat, pub } = await connected({ jwt: 'T' });
  pub.push({ type: 'error', ref: 1, code: 'banned', message: 'banned from lobby until 2026-01-01T00:00:00Z' });
  assert.equal(chat.status, Status.BANNED);
  await assert.rejects(chat.say('x'), (e) => e.code === 'banned' && /until 2026/.test(e.message));
  chat.close();
});

test('a temporary ban (kick with until) lifts by itself: reconnects, authenticates, say() works', async () => {
  const { world, chat, pub } = await connected({ jwt: 'T' });
  const reasons = [];
  chat.on('status', (s) => reasons.push([s.status, s.reason]));
  const until = Date.now() + 150;
  pub.push({ type: 'error', code: 'banned', ch: 'lobby', until, message: 'you are banned from this channel until …' });
  pub.serverClose(4502, 'banned from lobby');
  await waitFor(() => chat.status === Status.BANNED, 'banned');
  const iso = new Date(until).toISOString().replace(/\.\d{3}Z$/, 'Z');
  assert.deepEqual(reasons.at(-1), [Status.BANNED, `banned from lobby until ${iso}`]);
  await assert.rejects(chat.say('too early'), (e) => e.code === 'banned' && e.until === until && e.message.includes(iso));
  assert.equal(world.socketsTo('/pub').length, 1, 'no reconnect while banned');
  // At its end: a new publisher socket, the token, the room joined again.
  const again = await authenticatePublisher(world, 'ann', 1);
  assert.ok(Date.now() >= until, 'not reconnected before the ban ended');
  await waitFor(() => chat.status === Status.AUTHENTICATED, 'authenticated again');
  await waitFor(() => again.frames().some((f) => f.join === 'lobby'), 'the join');
  const said = chat.say('back');
  await waitFor(() => again.frames().some((f) => f.msg === 'back'), 'the message sent');
  const frame = again.frames().find((f) => f.msg === 'back');
  again.push({ type: 'ack', ref: frame.ref, id: 9, ep: 7 });
  assert.deepEqual(await said, { ch: 'lobby', id: 9, ep: 7 });
  chat.close();
});

test('a permanent ban (until null) stays: no timer, no reconnect', async () => {
  const { world, chat, pub } = await connected({ jwt: 'T' });
  let reason = '';
  chat.on('status', (s) => {
    if (s.status === Status.BANNED) reason = s.reason;
  });
  pub.push({ type: 'error', code: 'banned', ch: 'lobby', until: null, message: 'you are banned from this channel permanently' });
  pub.serverClose(4502, 'banned from lobby');
  await waitFor(() => chat.status === Status.BANNED, 'banned');
  assert.equal(reason, 'banned from lobby permanently');
  await assert.rejects(chat.say('x'), (e) => e.code === 'banned' && e.until === null);
  await sleep(150);
  assert.equal(world.socketsTo('/pub').length, 1);
  assert.equal(chat.status, Status.BANNED);
  chat.close();
});

test('a join refused until a time is joined again then, and sending works', async () => {
  const { chat, pub } = await connected({ jwt: 'T' });
  const until = Date.now() + 120;
  pub.push({ type: 'error', ref: 1, code: 'banned', until, message: 'you are banned from this channel until …' });
  assert.equal(chat.status, Status.BANNED);
  await assert.rejects(chat.say('x'), (e) => e.code === 'banned' && /^banned from lobby until /.test(e.message));
  await waitFor(() => pub.frames().filter((f) => f.join === 'lobby').length === 2, 'the room joined again', 3000);
  assert.ok(Date.now() >= until);
  const join = pub.frames().filter((f) => f.join === 'lobby')[1];
  pub.push({ type: 'joined', ref: join.ref, ch: 'lobby' });
  assert.equal(chat.status, Status.AUTHENTICATED);
  const said = chat.say('hi again');
  const frame = pub.frames().find((f) => f.msg === 'hi again');
  pub.push({ type: 'ack', ref: frame.ref, id: 3, ep: 7 });
  assert.deepEqual(await said, { ch: 'lobby', id: 3, ep: 7 });
  chat.close();
});

test('a message refused as banned until a time bans the room until then (no kick came)', async () => {
  const { chat, pub } = await connected({ jwt: 'T' });
  pub.push({ type: 'joined', ref: 1, ch: 'lobby' });
  const said = chat.say('x');
  const frame = pub.frames().find((f) => f.msg === 'x');
  const until = Date.now() + 100;
  pub.push({ type: 'error', ref: frame.ref, code: 'banned', until, message: 'you are banned from this channel until …' });
  await assert.rejects(said, (e) => e.code === 'banned' && e.until === until);
  assert.equal(chat.status, Status.BANNED);
  // Another channel's refusal is only that say()'s.
  const elsewhere = chat.say('y', { channel: 'news' });
  const other = pub.frames().find((f) => f.msg === 'y');
  pub.push({ type: 'error', ref: other.ref, code: 'banned', until: null, message: 'banned there' });
  await assert.rejects(elsewhere, (e) => e.code === 'banned' && e.until === null);
  await waitFor(() => pub.frames().filter((f) => f.join === 'lobby').length === 2, 'the room joined again', 3000);
  const join = pub.frames().filter((f) => f.join === 'lobby')[1];
  pub.push({ type: 'joined', ref: join.ref, ch: 'lobby' });
  assert.equal(chat.status, Status.AUTHENTICATED);
  chat.close();
});

test('a refused token: auth error, no reconnect, authenticate() with a new one recovers', async () => {
  const world = makeWorld();
  world.route('POST', '/join/lobby', () => joinAnswer('h1'));
  const { chat, statuses } = client(world, { jwt: 'EXPIRED' });
  const ready = chat.init();
  (await world.nextSocket('/sub/')).accept();
  const pub = await world.nextSocket('/pub');
  pub.accept();
  await waitFor(() => pub.sent.length === 1, 'the token');
  pub.push({ type: 'error', code: 'token_expired', message: 'the token expired at …' });
  pub.serverClose(4501, 'token_expired');
  await assert.rejects(ready, (e) => e.code === 'token_expired' && e.message === 'the token expired at …');
  assert.equal(chat.status, Status.AUTH_ERROR);
  await assert.rejects(chat.say('x'), (e) => e.code === 'token_expired');
  await sleep(40);
  assert.equal(world.socketsTo('/pub').length, 1, 'no retry with the refused token');
  const user = chat.authenticate('FRESH');
  const again = await authenticatePublisher(world, 'ann', 1);
  assert.equal(again.sent[0], 'FRESH');
  assert.deepEqual(await user, { name: 'ann' });
  assert.ok(statuses.indexOf(Status.AUTH_ERROR) > 0, statuses.join());
  assert.equal(statuses.at(-1), Status.AUTHENTICATED);
  chat.close();
});

test('a token function is asked on every connection, and once more after token_expired', async () => {
  const world = makeWorld();
  world.route('POST', '/join/lobby', () => joinAnswer('h1'));
  let calls = 0;
  const { chat } = client(world, { jwt: async () => `T${++calls}` });
  const ready = chat.init();
  (await world.nextSocket('/sub/')).accept();
  const pub = await world.nextSocket('/pub');
  pub.accept();
  await waitFor(() => pub.sent.length === 1, 'the token');
  assert.equal(pub.sent[0], 'T1');
  pub.push({ type: 'error', code: 'token_expired', message: 'expired' });
  pub.serverClose(4501, 'token_expired');
  const again = await authenticatePublisher(world, 'ann', 1);
  assert.equal(again.sent[0], 'T2');
  await ready;
  assert.equal(chat.status, Status.AUTHENTICATED);
  chat.close();
});

test('authenticate on an open socket sends the new token in place', async () => {
  const { world, chat, pub } = await connected({ jwt: 'OLD' });
  const renewed = chat.authenticate('NEW');
  await waitFor(() => pub.frames().some((f) => f.token === 'NEW'), 'the token frame');
  pub.push({ type: 'auth', user: { name: 'ann', badge: 'gold' } });
  assert.deepEqual(await renewed, { name: 'ann', badge: 'gold' });
  assert.equal(world.socketsTo('/pub').length, 1);
  chat.close();
});

test('a publisher that cannot connect moves the client to another host', async () => {
  const world = makeWorld();
  world.route('POST', '/join/lobby', (r) => (r.body ? joinAnswer('h2', { base: 'http://chat2.test' }) : joinAnswer('h1')));
  const { chat } = client(world, { jwt: 'T', hostFailures: 2 });
  const first = chat.init();
  const sub = await world.nextSocket('/sub/');
  sub.accept();
  await waitFor(() => chat.status === Status.CONNECTED, 'connected');
  sub.push(msg(3, 'x'));
  (await world.nextSocket('chat.test:8080/pub', 0)).refuse();
  // init() says the token could not be sent; the client goes on trying.
  await assert.rejects(first, (e) => e.code === 'host_unreachable' && /publisher connection to ws:\/\/chat\.test:8080\/pub could not be opened \(1006\)/.test(e.message));
  (await world.nextSocket('chat.test:8080/pub', 1)).refuse();
  const sub2 = await world.nextSocket('chat2.test/sub/');
  assert.equal(sub2.url, 'ws://chat2.test/sub/lobby?since=lobby:7:3');
  assert.ok(sub.closedByClient, 'the old subscriber is closed');
  // Called again, init() waits for the attempt on the new host.
  const ready = chat.init();
  sub2.accept();
  await authenticatePublisher(world, 'ann', 2);
  await ready;
  assert.equal(world.socketsTo('/pub')[2].url, 'ws://chat2.test/pub');
  assert.equal(chat.status, Status.AUTHENTICATED);
  chat.close();
});

test('one count-refresh loop, whatever happens to the sockets', async () => {
  const world = makeWorld();
  world.route('POST', '/join/lobby', () => joinAnswer('h1', { subCount: 1, pubCount: 0 }));
  let served = 0;
  let concurrent = 0;
  let maxConcurrent = 0;
  world.route('GET', '/channels/lobby', async () => {
    served += 1;
    concurrent += 1;
    maxConcurrent = Math.max(maxConcurrent, concurrent);
    await sleep(15);
    concurrent -= 1;
    return { status: 200, body: { channel: 'lobby', subCount: 10 + served, pubCount: 2 } };
  });
  const { chat } = client(world, { countInterval: 20 });
  const counts = [];
  chat.on('counts', (c) => counts.push(c.subCount));
  const ready = chat.init();
  (await world.nextSocket('/sub/')).accept();
  await ready;
  await chat.init();
  for (let i = 1; i <= 3; i++) {
    world.socketsTo('/sub/')[i - 1].serverClose(1001);
    (await world.nextSocket('/sub/', i)).accept();
    await waitFor(() => chat.status === Status.CONNECTED, 'connected');
  }
  const start = served;
  await sleep(300);
  // One loop: each turn waits at least 16 ms plus a 15 ms answer, so at most 10 in 300 ms
  // (timers never fire early; a busy machine only makes it fewer). Two loops would be ~19.
  assert.ok(served - start >= 2 && served - start <= 10, `served ${served - start}`);
  assert.equal(maxConcurrent, 1);
  assert.equal(counts[0], 1);
  assert.ok(counts.length >= 3, `counts events: ${counts.length}`);
  chat.close();
  const after = served;
  await sleep(80);
  assert.equal(served, after, 'close() stops the loop');
});

/** A dispatcher whose counts answer says how many times it was asked (subCount 10 + n). */
function countingCounts(world) {
  const asked = { n: 0 };
  world.route('GET', '/channels/lobby', () => {
    asked.n += 1;
    return { status: 200, body: { channel: 'lobby', subCount: 10 + asked.n, pubCount: 1 } };
  });
  return asked;
}

// countSettle 40 with random 0.5: each refresh comes 40 * (1 + 0.5 / 3) ≈ 47 ms after the last change.
const SETTLE = 40;

test('after each connection the counts are asked again once the hosts can have counted it', async () => {
  const world = makeWorld();
  world.route('POST', '/join/lobby', () => joinAnswer('h1', { subCount: 1, pubCount: 0 }));
  const asked = countingCounts(world);
  const { chat } = client(world, { countSettle: SETTLE });
  const counts = [];
  chat.on('counts', (c) => counts.push(c.subCount));
  const ready = chat.init();
  (await world.nextSocket('/sub/')).accept();
  await ready;
  assert.equal(asked.n, 0, 'not at once: the hosts have not reported this page yet');
  await waitFor(() => asked.n === 1, 'the counts asked after connecting');
  assert.deepEqual(counts, [1, 11]);
  assert.deepEqual(chat.counts, { channel: 'lobby', subCount: 11, pubCount: 1 });
  // A reconnect: the room is counted again.
  world.socketsTo('/sub/')[0].serverClose(1001);
  (await world.nextSocket('/sub/', 1)).accept();
  await waitFor(() => asked.n === 2, 'the counts asked after reconnecting');
  assert.deepEqual(counts, [1, 11, 12]);
  chat.close();
});

test('joining as a chatter, then a burst of joins and leaves: one refresh each', async () => {
  const { world, sub, chat } = await connected({ countSettle: SETTLE, jwt: 'token' });
  const asked = countingCounts(world);
  await waitFor(() => asked.n === 1, 'the counts asked after connecting');
  const pub = world.socketsTo('/pub')[0];
  await waitFor(() => pub.frames().some((f) => f.join === 'lobby'), 'the room joined');
  pub.push({ type: 'joined', ref: pub.frames().find((f) => f.join === 'lobby').ref, ch: 'lobby' });
  await waitFor(() => asked.n === 2, 'the counts asked after joining the room');
  for (let i = 0; i < 5; i++) {
    sub.push({ ch: 'lobby', id: 100 + 2 * i, ep: 7, t: 1, ev: 'join', data: { name: `u${i}` } });
    sub.push({ ch: 'lobby', id: 101 + 2 * i, ep: 7, t: 1, ev: 'leave', data: { name: `u${i}` } });
    await sleep(5);
  }
  await waitFor(() => asked.n === 3, 'the counts asked after the burst');
  // Other events change no count.
  sub.push({ ch: 'lobby', id: 200, ep: 7, t: 1, ev: 'rmUserMsg', data: { name: 'u1' } });
  await sleep(SETTLE * 4);
  assert.equal(asked.n, 3, 'one refresh for the whole burst, none for other events');
  chat.close();
});

test('countSettle 0 asks for no counts after changes', async () => {
  const { world, sub, chat } = await connected({ countSettle: 0, jwt: 'token' });
  const asked = countingCounts(world);
  const pub = world.socketsTo('/pub')[0];
  await waitFor(() => pub.frames().some((f) => f.join === 'lobby'), 'the room joined');
  pub.push({ type: 'joined', ref: pub.frames().find((f) => f.join === 'lobby').ref, ch: 'lobby' });
  sub.push({ ch: 'lobby', id: 100, ep: 7, t: 1, ev: 'join', data: { name: 'u' } });
  await sleep(SETTLE * 4);
  assert.equal(asked.n, 0);
  chat.close();
});

test('close() cancels a pending counts refresh', async () => {
  const { world, sub, chat } = await connected({ countSettle: SETTLE });
  const asked = countingCounts(world);
  sub.push({ ch: 'lobby', id: 100, ep: 7, t: 1, ev: 'leave', data: { name: 'u' } });
  chat.close();
  await sleep(SETTLE * 4);
  assert.equal(asked.n, 0);
});

test('getUsers pages through the dispatcher and checks its arguments', async () => {
  const world = makeWorld();
  world.route('GET', '/channels/lobby/users', (r) => ({ status: 200, body: { channel: 'lobby', total: 3, users: [{ name: 'b' }], skip: 1, limit: 1, path: r.path } }));
  const { chat } = client(world);
  const page = await chat.getUsers({ skip: 1, limit: 1 });
  assert.equal(page.path, '/channels/lobby/users?skip=1&limit=1');
  assert.deepEqual(page.users, [{ name: 'b' }]);
  await assert.rejects(chat.getUsers({ limit: 0 }), /limit must be a whole number from 1 to 1000/);
  await assert.rejects(chat.getUsers({ skip: -1 }), /skip must be/);
  world.route('GET', '/channels/lobby/users', () => new TypeError('Failed to fetch'));
  await assert.rejects(chat.getUsers(), (e) => e.code === 'unreachable' && /Failed to fetch/.test(e.message));
});

test('close() stops everything and rejects what waits', async () => {
  const { world, chat, statuses, pub } = await connected({ jwt: 'T' });
  const pending = chat.say('bye');
  chat.close();
  await assert.rejects(pending, (e) => e.code === 'closed');
  assert.equal(chat.status, Status.DISCONNECTED);
  assert.ok(pub.closedByClient);
  await sleep(40);
  assert.equal(world.sockets.length, 2, 'nothing reopens');
  await assert.rejects(chat.init(), (e) => e.code === 'closed');
  assert.equal(statuses.at(-1), Status.DISCONNECTED);
});

/** The page's origin in the tests that act as a browser page on another origin. */
const PAGE = 'http://page.test:3000';
const FAILED_TO_FETCH = () => new TypeError('Failed to fetch');

test('an unreachable dispatcher: reconnecting with when, init rejects naming it, a later success connects', async () => {
  const world = makeWorld();
  let failures = 3;
  world.route('POST', '/join/lobby', () => (failures-- > 0 ? FAILED_TO_FETCH() : joinAnswer('h1')));
  // Nothing answers at all: the plain probe fails too.
  world.route('GET', '/', FAILED_TO_FETCH);
  const { chat, statuses } = client(world, { origin: PAGE });
  const changes = [];
  const retries = [];
  chat.on('status', (s) => changes.push(s));
  chat.on('retry', (r) => retries.push(r));
  const ready = chat.init();
  await assert.rejects(ready, (e) => e instanceof ChatUpError && e.code === 'unreachable'
    && e.message.startsWith('cannot reach the dispatcher at http://chat.test:8080/ (Failed to fetch): nothing answers there'));
  const reconnecting = changes.find((s) => s.status === Status.RECONNECTING);
  assert.equal(reconnecting.previous, Status.CONNECTING);
  assert.equal(reconnecting.error.code, 'unreachable');
  assert.equal(typeof reconnecting.retryIn, 'number');
  assert.match(reconnecting.reason, /^cannot reach the dispatcher at http:\/\/chat\.test:8080\/ .*; retrying in \d+\.\d s$/);
  const sub = await world.nextSocket('/sub/');
  // init() again waits for the attempt under way.
  const again = chat.init();
  sub.accept();
  assert.equal(await again, chat);
  assert.deepEqual(statuses, [Status.CONNECTING, Status.RECONNECTING, Status.CONNECTED]);
  assert.deepEqual(retries.map((r) => [r.attempt, r.error.code, r.delay]), [[1, 'unreachable', 2], [2, 'unreachable', 4], [3, 'unreachable', 8]]);
  assert.ok(world.requests.some((r) => r.path === '/' && r.mode === 'no-cors'), 'probed');
  chat.close();
});

test('a dispatcher that answers but not to this origin: cors_refused names the origin and the setting', async () => {
  const world = makeWorld();
  let refusals = 1;
  // CORS keeps the answer from the page; a no-cors request gets an (opaque) answer.
  world.route('POST', '/join/lobby', () => (refusals-- > 0 ? FAILED_TO_FETCH() : joinAnswer('h1')));
  const { chat, statuses } = client(world, { origin: PAGE });
  let reason = '';
  chat.on('status', (s) => {
    if (s.status === Status.RECONNECTING) reason = s.reason;
  });
  await assert.rejects(chat.init(), (e) => e.code === 'cors_refused'
    && e.message.includes('the dispatcher at http://chat.test:8080/ answers, but the browser does not let this page read its answer to POST /join/lobby')
    && e.message.endsWith('add "http://page.test:3000" to dispatch.cors_origins in the dispatcher\'s config'));
  assert.match(reason, /dispatch\.cors_origins.*; retrying in/);
  const probe = world.requests.find((r) => r.mode === 'no-cors');
  assert.deepEqual([probe.method, probe.path], ['GET', '/']);
  (await world.nextSocket('/sub/')).accept();
  await waitFor(() => chat.status === Status.CONNECTED, 'connected once allowed');
  assert.deepEqual(statuses, [Status.CONNECTING, Status.RECONNECTING, Status.CONNECTED]);
  chat.close();
});

test('without a page origin (or on the same one) CORS cannot be the cause: unreachable, no probe', async () => {
  for (const origin of [null, 'http://chat.test:8080']) {
    const world = makeWorld();
    world.route('POST', '/join/lobby', FAILED_TO_FETCH);
    const { chat } = client(world, { origin });
    await assert.rejects(chat.init(), (e) => e.code === 'unreachable');
    assert.ok(!world.requests.some((r) => r.mode === 'no-cors'), `no probe for origin ${origin}`);
    chat.close();
  }
  // An https page and an http dispatcher that does not answer: mixed content, most likely.
  const world = makeWorld();
  world.route('POST', '/join/lobby', FAILED_TO_FETCH);
  world.route('GET', '/', FAILED_TO_FETCH);
  const { chat } = client(world, { origin: 'https://page.test' });
  await assert.rejects(chat.init(), (e) => e.code === 'unreachable' && /mixed content/.test(e.message));
  chat.close();
});

test('a dispatcher that never answers: timeout after requestTimeout, aborted, retried', async () => {
  const world = makeWorld();
  let hang = 1;
  world.route('POST', '/join/lobby', () => (hang-- > 0 ? new Promise(() => {}) : joinAnswer('h1')));
  const { chat, statuses } = client(world, { requestTimeout: 40 });
  await assert.rejects(chat.init(), (e) => e.code === 'timeout'
    && e.message.startsWith('the dispatcher at http://chat.test:8080/ did not answer POST /join/lobby within 40 ms (requestTimeout)'));
  assert.equal(world.requests[0].signal.aborted, true, 'the request is aborted');
  (await world.nextSocket('/sub/')).accept();
  await waitFor(() => chat.status === Status.CONNECTED, 'connected');
  assert.deepEqual(statuses, [Status.CONNECTING, Status.RECONNECTING, Status.CONNECTED]);
  chat.close();
});

test('a host whose socket cannot be opened: reconnecting, init rejects host_unreachable, retried', async () => {
  const world = makeWorld();
  world.route('POST', '/join/lobby', () => joinAnswer('h1'));
  const { chat, statuses } = client(world, { connectTimeout: 30 });
  let reason = '';
  chat.on('status', (s) => {
    if (s.status === Status.RECONNECTING) reason = s.reason;
  });
  const ready = chat.init();
  (await world.nextSocket('/sub/')).refuse();
  await assert.rejects(ready, (e) => e.code === 'host_unreachable'
    && e.message.startsWith('the room\'s connection to ws://chat.test:8080/sub/ could not be opened (1006)'));
  assert.match(reason, /could not be opened.*; retrying in \d+\.\d s$/);
  // One that never opens: connectTimeout.
  const again = chat.init();
  await world.nextSocket('/sub/', 1);
  await assert.rejects(again, (e) => e.code === 'host_unreachable' && /no connection within 30 ms \(connectTimeout\)/.test(e.message));
  const last = chat.init();
  (await world.nextSocket('/sub/', 2)).accept();
  assert.equal(await last, chat);
  assert.deepEqual(statuses, [Status.CONNECTING, Status.RECONNECTING, Status.CONNECTED]);
  chat.close();
});

test('close() ends the retries of an unreachable dispatcher', async () => {
  const world = makeWorld();
  world.route('POST', '/join/lobby', FAILED_TO_FETCH);
  const { chat } = client(world, { reconnectDelay: 20 });
  await assert.rejects(chat.init(), (e) => e.code === 'unreachable');
  chat.close();
  const asked = world.requests.length;
  await sleep(60);
  assert.equal(world.requests.length, asked);
  assert.equal(chat.status, Status.DISCONNECTED);
});
