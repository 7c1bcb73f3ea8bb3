// The example chat page: pick a name, join a room with a demo token, chat; with the demo's
// subscribe tokens (scripts/run), also exchange direct messages: each user watches their own
// private channel (`user.<id>`), and a message to someone goes to theirs.
//
// Served by nginx when `scripts/run` runs (http://127.0.0.1:8080/). Demo tokens come from the
// sidecar's `POST /demo/token`, which only `scripts/run` turns on ([demo] in chatup.toml); a
// real site mints tokens in its own backend. Everything shown is set as text, never as HTML.
//
// Query parameters: `room` and `name` fill the form (with `name`, the page joins at once;
// `watch=1` watches without a name); `dispatcher` is the dispatcher's URL when it is not this
// page's origin (it must allow the origin: `dispatch.cors_origins`); `reconnectDelay`,
// `maxReconnectDelay`, `countInterval`, `countSettle` and `requestTimeout` (ms) are passed to the client.

import { ChatUp, Status } from '../src/chatup.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

const STATUS_TEXT = {
  [Status.CONNECTING]: 'connecting',
  [Status.CONNECTED]: 'connected',
  [Status.AUTHENTICATED]: 'authenticated',
  [Status.RECONNECTING]: 'reconnecting',
  [Status.SWITCHING_HOST]: 'switching host',
  [Status.DISCONNECTED]: 'disconnected',
  [Status.NO_HOST]: 'no host',
  [Status.AUTH_ERROR]: 'auth error',
  [Status.BANNED]: 'banned',
};

/** The client of this page, also `window.chat` for a look from the console. */
let chat = null;

/**
 * How long after a join or leave (or this page's own connection) the page asks for the
 * "Who is here" list again, while it is shown: the hosts report who is joined about every
 * second and answers are cached as long, so asking at once would get the old list. Spread
 * over a second, so that a big room's pages do not all ask at the same moment. (The counts
 * are the client's: it asks again after the same changes, see its `countSettle`.)
 */
const SETTLE_MS = 3000;
const SETTLE_SPREAD_MS = 1000;

/** "Who is here": shown or not, and the users listed, by their `_public` JSON. */
const who = { open: false, users: new Map(), more: 0, error: '', loading: null };
let settleTimer = null;
/** Clears a "try again in N s" line once the N seconds are over. */
let sendErrorTimer = null;

/** This user's own channel (direct messages come there) and id, when the demo gives them. */
const me = { ownChannel: '', id: '' };

/**
 * A demo user's id from a name, as the sidecar makes it (`demo_user_id`): lower-cased ASCII
 * letters and digits, `_` and `-` kept, any other character `-`.
 */
function demoUserId(name) {
  return [...name].map((c) => (/[a-z0-9_-]/.test(c) ? c : /[A-Z]/.test(c) ? c.toLowerCase() : '-')).join('');
}

/** The own channel of the user called `name`: this user's, with the id swapped. */
function channelOf(name) {
  return me.ownChannel.slice(0, me.ownChannel.length - me.id.length) + demoUserId(name);
}

/** The demo's answer: the publisher token, and, with direct messages, id and subscribe token. */
async function demoAnswer(name) {
  const response = await fetch('/demo/token', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ name }),
  });
  const answer = await response.json().catch(() => null);
  if (!response.ok) {
    const why = answer && answer.error ? answer.error.message : `HTTP ${response.status}`;
    throw new Error(`no demo token: ${why}`);
  }
  return answer;
}

async function demoToken(name) {
  return (await demoAnswer(name)).token;
}

function clientOptions() {
  const options = {};
  for (const key of ['reconnectDelay', 'maxReconnectDelay', 'countInterval', 'countSettle', 'requestTimeout']) {
    const value = Number(params.get(key));
    if (params.has(key) && Number.isFinite(value)) options[key] = value;
  }
  return options;
}

function time(t) {
  return new Date(t).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' });
}

function scrolledToEnd(list) {
  return list.scrollHeight - list.scrollTop - list.clientHeight < 40;
}

function append(li) {
  const list = $('messages');
  const follow = scrolledToEnd(list);
  list.append(li);
  if (follow) list.scrollTop = list.scrollHeight;
}

function userName(user) {
  return (user && typeof user.name === 'string' && user.name) || 'someone';
}

function showMessage(m) {
  const li = document.createElement('li');
  li.className = m.ch === me.ownChannel && me.ownChannel ? 'message dm' : 'message';
  li.dataset.ch = m.ch;
  li.dataset.id = String(m.id);
  li.dataset.ep = String(m.ep);
  li.dataset.user = userName(m.user);
  // A site that puts its user id in `_public` lets bans by user id hide messages too.
  if (m.user && (typeof m.user.id === 'string' || typeof m.user.id === 'number')) li.dataset.userId = String(m.user.id);
  const when = document.createElement('span');
  when.className = 'time';
  when.textContent = time(m.t);
  const name = document.createElement('span');
  name.className = 'name';
  name.textContent = userName(m.user);
  // A click on a name answers that user directly.
  name.addEventListener('click', () => {
    if (!$('to').hidden && m.user && m.user.name) $('to').value = m.user.name;
  });
  const text = document.createElement('span');
  text.className = 'text';
  text.textContent = m.msg;
  if (li.classList.contains('dm')) {
    const via = Object.assign(document.createElement('span'), { className: 'via', textContent: 'to you' });
    li.append(when, name, via, text);
  } else {
    li.append(when, name, text);
  }
  append(li);
}

/** A direct message this page sent: shown here, as the other user's page shows it. */
function showSentDM(to, text) {
  const li = document.createElement('li');
  li.className = 'message dm sent';
  li.dataset.to = to;
  const when = Object.assign(document.createElement('span'), { className: 'time', textContent: time(Date.now()) });
  const via = Object.assign(document.createElement('span'), { className: 'via', textContent: `to ${to}` });
  const line = Object.assign(document.createElement('span'), { className: 'text', textContent: text });
  li.append(when, via, line);
  append(li);
}

/** A line about the room; with `t` (the server's time of the event), that time first. */
function notice(text, kind, t) {
  const li = document.createElement('li');
  li.className = 'notice';
  li.dataset.kind = kind;
  const line = document.createElement('span');
  line.className = 'text';
  line.textContent = text;
  if (typeof t === 'number') {
    const when = document.createElement('span');
    when.className = 'time';
    when.textContent = time(t);
    li.append(when);
  }
  li.append(line);
  append(li);
}

function showEvent(e) {
  switch (e.ev) {
    case 'join':
      notice(`${userName(e.user)} joined`, 'join', e.t);
      moved(e.user, true);
      break;
    case 'leave':
      notice(`${userName(e.user)} left`, 'leave', e.t);
      moved(e.user, false);
      break;
    case 'rmUserMsg': {
      // A moderator banned this user: hide what they said. `by` says what `data` is: `name`
      // (the token's `_public.name`, shown here) or `user` (its `sub`, which messages carry
      // only if the site puts it in `_public` as `id`). Servers before `by` sent the id, which
      // for demo tokens (no `sub`) was the name.
      const banned = String(e.data);
      const byUser = e.by === 'user';
      for (const li of document.querySelectorAll('#messages li.message')) {
        if (byUser ? li.dataset.userId === banned : li.dataset.user === banned) {
          li.classList.add('removed');
          li.querySelector('.text').textContent = '(removed by a moderator)';
        }
      }
      notice(`a moderator removed ${banned}`, 'moderation', e.t);
      break;
    }
    case 'resync':
      notice('some earlier messages are no longer available', 'resync');
      break;
    default:
      notice(`${e.ev}${e.data === undefined ? '' : ` ${JSON.stringify(e.data)}`}`, 'event', e.t);
  }
}

/** A user joined (or left): "Who is here" shows it now, and the list again once the hosts tell. */
function moved(user, joined) {
  if (user && typeof user === 'object') {
    const key = JSON.stringify(user);
    if (who.loading) who.loading.push([key, user, joined]);
    else if (joined) who.users.set(key, user);
    else who.users.delete(key);
    if (who.open) renderWho();
  }
  settleSoon();
}

/** Asks for the list, when shown, once the hosts have reported a change. */
function settleSoon() {
  clearTimeout(settleTimer);
  settleTimer = setTimeout(() => {
    settleTimer = null;
    if (chat && who.open) loadWho();
  }, SETTLE_MS + Math.random() * SETTLE_SPREAD_MS);
}

/** Fetches "Who is here"; joins and leaves seen meanwhile are applied on top. */
async function loadWho() {
  if (who.loading) return;
  who.loading = [];
  try {
    const page = await chat.getUsers({ limit: 100 });
    who.users = new Map(page.users.map((user) => [JSON.stringify(user), user]));
    who.more = Math.max(0, page.total - page.users.length);
    who.error = '';
  } catch (e) {
    who.error = e.message;
  }
  const seen = who.loading;
  who.loading = null;
  for (const [key, user, joined] of seen) {
    if (joined) who.users.set(key, user);
    else who.users.delete(key);
  }
  if (who.open) renderWho();
}

function renderWho() {
  const item = (text) => Object.assign(document.createElement('li'), { textContent: text });
  const items = [...who.users.values()].map((user) => item(userName(user)));
  if (who.more > 0) items.push(item(`and ${who.more} more`));
  if (!items.length) items.push(item('nobody has joined'));
  if (who.error) items.push(item(who.error));
  $('user-list').replaceChildren(...items);
}

function showStatus({ status, reason }) {
  const badge = $('status');
  badge.dataset.status = status;
  badge.textContent = STATUS_TEXT[status] || status;
  let why = '';
  if (status === Status.BANNED) why = reason || 'banned from this room';
  else if (status === Status.AUTH_ERROR || status === Status.NO_HOST || status === Status.DISCONNECTED || status === Status.RECONNECTING) why = reason;
  $('status-reason').textContent = why;
  // The list this page started with was taken before it had joined.
  if (status === Status.CONNECTED || status === Status.AUTHENTICATED) settleSoon();
  const canSend = status === Status.AUTHENTICATED;
  $('text').disabled = !canSend;
  $('send').disabled = !canSend;
  if (status === Status.BANNED) $('send-error').textContent = `You cannot send here: ${why}`;
  // A ban that ended: its notice goes with it.
  else if (canSend && $('send-error').textContent.startsWith('You cannot send here')) $('send-error').textContent = '';
}

async function start(name, room) {
  $('join-error').textContent = '';
  let jwt = null;
  const direct = {};
  if (name) {
    // Asked again on every connection, so an expired token is replaced on its own.
    jwt = () => demoToken(name);
    try {
      const answer = await demoAnswer(name);
      if (answer.ownChannel && answer.subscribeToken && answer.ownChannel !== room) {
        // Direct messages: this user's own channel is watched too, with a subscribe token
        // the client asks for again before it expires.
        me.ownChannel = answer.ownChannel;
        me.id = answer.id;
        direct.additionalChannels = [answer.ownChannel];
        direct.getSubscribeToken = async () => (await demoAnswer(name)).subscribeToken;
      } else if (answer.subscribeToken) {
        // Watching a private room (someone's own channel, say): only this token may open it.
        direct.getSubscribeToken = async () => (await demoAnswer(name)).subscribeToken;
      }
    } catch (e) {
      $('join-error').textContent = e.message;
      return;
    }
  }
  try {
    const dispatcherURL = params.get('dispatcher') || location.origin;
    chat = new ChatUp({ dispatcherURL, room, jwt, ...direct, ...clientOptions() });
  } catch (e) {
    $('join-error').textContent = e.message;
    return;
  }
  window.chat = chat;
  chat.on('message', showMessage);
  chat.on('event', showEvent);
  chat.on('status', showStatus);
  // Each failed attempt says why and when the next one is (the status stays `reconnecting`).
  chat.on('retry', ({ error, delay }) => {
    if (chat.status === Status.RECONNECTING) $('status-reason').textContent = `${error.message}; retrying in ${(delay / 1000).toFixed(1)} s`;
  });
  chat.on('counts', ({ subCount, pubCount }) => {
    $('viewers').textContent = String(subCount);
    $('chatters').textContent = String(pubCount);
  });
  $('join-form').hidden = true;
  $('chat').hidden = false;
  $('who').disabled = false;
  $('room-title').textContent = `#${room}`;
  document.title = `#${room} · chatup`;
  $('text').placeholder = name ? `Say something as ${name}` : 'Watching only: join with a name to chat';
  $('to').hidden = !me.ownChannel;
  try {
    await chat.init();
  } catch (e) {
    // While retrying, the status line says why and when; other errors are final.
    if (chat.status !== Status.RECONNECTING) $('send-error').textContent = e.message;
  }
}

$('join-form').addEventListener('submit', (event) => {
  event.preventDefault();
  start($('name').value.trim(), $('room').value.trim());
});

$('watch').addEventListener('click', () => start('', $('room').value.trim()));

$('send-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const input = $('text');
  const text = input.value;
  if (!text.trim() || !chat) return;
  $('send-error').textContent = '';
  input.value = '';
  const to = $('to').hidden ? '' : $('to').value.trim();
  try {
    if (to) {
      await chat.say(text, { channel: channelOf(to) });
      showSentDM(to, text);
    } else {
      await chat.say(text);
    }
  } catch (e) {
    // The server's message may say when already (the rate limit's does).
    const wait = e.retryAfter && !/try again/i.test(e.message) ? ` (try again in ${e.retryAfter} s)` : '';
    const line = `Not sent: ${e.message}${wait}`;
    $('send-error').textContent = line;
    if (!input.value) input.value = text;
    if (e.retryAfter) {
      // Past the wait the line would be wrong: it goes, unless something else is shown.
      clearTimeout(sendErrorTimer);
      sendErrorTimer = setTimeout(() => {
        if ($('send-error').textContent === line) $('send-error').textContent = '';
      }, e.retryAfter * 1000);
    }
  }
});

// "Who is here" follows joins and leaves while it is shown (and is fetched again once the
// hosts have reported them, in case an event was missed while reconnecting).
$('who').addEventListener('click', async () => {
  const panel = $('users');
  if (who.open) {
    who.open = false;
    panel.hidden = true;
    return;
  }
  who.open = true;
  $('user-list').replaceChildren();
  await loadWho();
  panel.hidden = !who.open;
});

if (params.has('room')) $('room').value = params.get('room');
if (params.has('name')) {
  $('name').value = params.get('name');
  start(params.get('name').trim(), $('room').value.trim());
} else if (params.get('watch') === '1') {
  start('', $('room').value.trim());
}
