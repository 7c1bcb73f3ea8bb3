// chatup browser client: watch a room and chat in it.
//
//   import { ChatUp } from './chatup.js';
//   const chat = new ChatUp({ dispatcherURL: 'https://chat.example.com', room: 'lobby', jwt });
//   chat.on('message', (m) => show(m.user.name, m.msg));
//   chat.on('status', ({ status }) => showStatus(status));
//   await chat.init();
//   await chat.say('hello');
//
// A room is watched through a subscriber connection (`/sub/<room>[/<more>]`, served by nginx:
// a WebSocket, or where that fails an SSE stream, or long-polls) and written to through a
// publisher WebSocket (`/pub`, the sidecar; `POST /pub/<room>` without WebSocket). The dispatcher
// (`POST /join/<room>`) names the host to use and gives the recent history; `GET
// /channels/<room>` gives the viewer and chatter counts. Both sockets reconnect on their own,
// with exponential backoff and full jitter; the subscriber resumes with `since`, so a message
// is neither lost nor shown twice; after repeated failures the client asks the dispatcher for
// another host. Close codes 4500-4999 mean "do not reconnect until something changes" (bad or
// expired token, banned, bad request).
//
// A private channel (the operator's `[private] channels`) is watched with a subscribe token,
// a JWT from the site's backend: `getSubscribeToken` gives it, and it goes in the viewer's
// query as `token=` on every transport (a browser cannot set headers on a WebSocket or an
// EventSource). The client asks for a new one when the one it has ends within 30 s, and when
// the server closes the viewer with 4002 (expired), then reconnects at once and resumes. A
// WebSocket or SSE refusal shows a page no status, so when one does not open the client asks
// the same URL once as a long poll, which does: a refused token is fetched afresh once, a
// forbidden channel or a ban stops the client with the server's reason.
//
// A failure is never silent: when the dispatcher cannot be reached (nothing answers, it
// refuses this page's origin, or it does not answer within `requestTimeout`) or a socket
// cannot be opened, the status turns `reconnecting`, the `retry` event says why and when the
// next attempt is, init() rejects with a ChatUpError naming the likely cause, and the client
// goes on retrying: a later success still connects.
//
// Every say() carries an idempotency key (a random UUID). When its outcome is unknown (the
// connection dropped before the answer, or the server answered `unavailable`), the client
// sends it again with the same key until `sendTimeout`; the server publishes a key once, so a
// retry can never post the message twice.
//
// No dependencies; runs in browsers and in Node 22+ (or with `WebSocket`, `EventSource` and
// `fetch` given).

/** The client's state, as one value for a status line. */
export const Status = Object.freeze({
  /** Asking the dispatcher for a host, or opening the first connection (before any failure). */
  CONNECTING: 'connecting',
  /** Receiving the room's messages (no token, or the token is being checked). */
  CONNECTED: 'connected',
  /** Receiving, and allowed to send. */
  AUTHENTICATED: 'authenticated',
  /**
   * An attempt failed (the dispatcher or a socket, the first one included, or a connection
   * dropped): retrying with backoff, catching up on reconnect. The reason says why and when.
   */
  RECONNECTING: 'reconnecting',
  /** The host failed repeatedly: asking the dispatcher for another one. */
  SWITCHING_HOST: 'switchingHost',
  /** Not started, closed by `close()`, or stopped by an error that retrying cannot fix. */
  DISCONNECTED: 'disconnected',
  /** The dispatcher has no live host to offer: retrying with backoff. */
  NO_HOST: 'noHost',
  /** The token was refused (bad, expired): receiving goes on; `authenticate()` with a new one. */
  AUTH_ERROR: 'authError',
  /** Banned from the room: receiving goes on, sending is refused. */
  BANNED: 'banned',
});

/** WebSocket close codes used by chatup (README, "Close codes"). */
export const CloseCode = Object.freeze({
  NORMAL: 1000,
  GOING_AWAY: 1001,
  SLOW_CONSUMER: 4000,
  PING_TIMEOUT: 4001,
  BAD_TOKEN: 4500,
  TOKEN_EXPIRED: 4501,
  BANNED: 4502,
  BAD_REQUEST: 4503,
  /** A viewer's subscribe token expired: a fresh one, reconnect and resume. */
  SUBSCRIBE_TOKEN_EXPIRED: 4002,
  /** The channel became private and this viewer was not admitted. */
  PRIVATE_CHANNEL: 4504,
  /** The operator removed this user. */
  USER_REMOVED: 4505,
});

/** Whether a socket closed with `code` may be reopened: 4500-4999 say "not until something changes". */
export function shouldReconnect(code) {
  return !(code >= 4500 && code <= 4999);
}

/**
 * The wait before reconnect attempt number `attempt` (1 for the first retry): a random
 * duration between 0 and `min(maxDelay, baseDelay * 2^(attempt-1))` ("full jitter"), so that
 * thousands of clients dropped at once do not come back at once.
 */
export function backoffDelay(attempt, baseDelay, maxDelay, random = Math.random) {
  const exponent = Math.min(Math.max(attempt - 1, 0), 30);
  const ceiling = Math.min(maxDelay, baseDelay * 2 ** exponent);
  return Math.floor(random() * ceiling);
}

const CHANNEL_NAME = /^[A-Za-z0-9_.-]{1,64}$/;

/** Checks a channel name against the server's rule; returns why it is refused, or null. */
export function channelProblem(name) {
  if (typeof name !== 'string') return 'a channel name must be a string';
  if (CHANNEL_NAME.test(name)) return null;
  if (name.length === 0) return 'a channel name cannot be empty';
  if (name.length > 64) return `channel name "${name.slice(0, 20)}…" is longer than 64 characters`;
  const bad = [...name].find((c) => !/[A-Za-z0-9_.-]/.test(c));
  return `channel name "${name}" has "${bad}": only ASCII letters, digits, "_", "-" and "." are allowed`;
}

const IDEMPOTENCY_KEY = /^[A-Za-z0-9_.:-]{1,64}$/;

/**
 * A fresh idempotency key: `crypto.randomUUID()` where the page may use it (secure contexts),
 * else a random version-4 UUID from `crypto.getRandomValues` (or, with no crypto at all,
 * `random`).
 */
export function newIdempotencyKey(crypto = globalThis.crypto, random = Math.random) {
  if (crypto && typeof crypto.randomUUID === 'function') return crypto.randomUUID();
  const bytes = new Uint8Array(16);
  if (crypto && typeof crypto.getRandomValues === 'function') crypto.getRandomValues(bytes);
  else for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(random() * 256);
  bytes[6] = (bytes[6] & 0x0f) | 0x40;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  const hex = [...bytes].map((b) => b.toString(16).padStart(2, '0')).join('');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/** An error with the server's (or the client's) error code, e.g. `banned`, `rate_limited`. */
export class ChatUpError extends Error {
  constructor(code, message, details = {}) {
    super(message || code);
    this.name = 'ChatUpError';
    /** Machine-readable: the server's `error.code`, or one of the client's own codes. */
    this.code = code;
    /** Seconds to wait before trying again, when the server said (`rate_limited`). */
    this.retryAfter = details.retryAfter ?? null;
    /** HTTP status, for errors of HTTP calls. */
    this.status = details.status ?? null;
    /**
     * The idempotency key of a say() whose outcome is unknown (`timeout`): say it again with
     * `{idempotencyKey}` and it is published at most once.
     */
    this.idempotencyKey = details.idempotencyKey ?? null;
    /**
     * For `banned`: when the ban ends, in ms since the Unix epoch; `null` when it is
     * permanent or the server did not say.
     */
    this.until = details.until ?? null;
  }
}

/** The longest a timer may wait (setTimeout's limit, some 24.8 days). */
const MAX_TIMER = 2 ** 31 - 1;

/** `banned from <channel>` with `until <ISO time>` or `permanently`, when known. */
function banText(channel, until) {
  const base = `banned from ${channel}`;
  if (until === null) return `${base} permanently`;
  if (typeof until !== 'number') return base;
  return `${base} until ${new Date(until).toISOString().replace(/\.\d{3}Z$/, 'Z')}`;
}

/** The ban's end a server frame gives: a number, `null` (for ever), or `undefined` (not said). */
function untilOf(frame) {
  if (!frame || !('until' in frame)) return undefined;
  if (frame.until === null) return null;
  return typeof frame.until === 'number' && Number.isFinite(frame.until) ? frame.until : undefined;
}

/**
 * Where each channel's reader is: the epoch and id of the last message delivered. Decides
 * which frames are new (delivered), old (dropped: already delivered), and builds `since`.
 */
export class ResumePoints {
  constructor() {
    this.points = new Map();
  }

  /** The `since` query value for `channels`, or '' when none has a position yet. */
  since(channels) {
    const parts = [];
    for (const ch of channels) {
      const p = this.points.get(ch);
      if (p && p.ep !== null) parts.push(`${ch}:${p.ep}:${p.id}`);
    }
    return parts.join(',');
  }

  /**
   * Takes one frame (a parsed message). Returns 'deliver', 'duplicate' or 'resync' (a
   * `resync` event: the position now points at the start of the new epoch, or stays when only
   * the cache was too short).
   */
  accept(frame) {
    const ch = frame.ch;
    if (frame.ev === 'resync' && frame.id === undefined) {
      const ep = frame.data && frame.data.ep;
      const p = this.points.get(ch);
      if (ep !== undefined && (!p || p.ep !== ep)) this.points.set(ch, { ep, id: 0 });
      return 'resync';
    }
    if (typeof frame.id !== 'number') return 'deliver';
    const p = this.points.get(ch);
    if (p && p.ep === frame.ep && frame.id <= p.id) return 'duplicate';
    // Another epoch without a resync first cannot come from a correct server; showing it
    // beats dropping it, and the new epoch becomes the position.
    this.points.set(ch, { ep: frame.ep, id: frame.id });
    return 'deliver';
  }

  /**
   * Whether the dispatcher's recent history of `ch` may be delivered: always when nothing
   * was seen yet; otherwise only when it joins up with what was seen (same epoch, no gap),
   * since delivering a later slice would move the position past messages never shown
   * (the subscriber's `since` fills those in instead).
   */
  historyFits(ch, history) {
    const p = this.points.get(ch);
    if (!p || history.length === 0) return true;
    const first = history[0];
    return first.ep === p.ep && first.id <= p.id + 1;
  }
}

/** Turns the dispatcher's host paths into absolute WebSocket URLs. */
export function hostEndpoints(host, dispatcherURL) {
  const ws = (path) => {
    const url = new URL(path, dispatcherURL);
    if (url.protocol === 'http:') url.protocol = 'ws:';
    else if (url.protocol === 'https:') url.protocol = 'wss:';
    return url.href;
  };
  return { id: host.id, sub: ws(host.sub), pub: ws(host.pub) };
}

/** A WebSocket URL of a host as the plain HTTP URL of the same place (SSE, polls, POST). */
function httpURL(wsURL) {
  const url = new URL(wsURL);
  if (url.protocol === 'ws:') url.protocol = 'http:';
  else if (url.protocol === 'wss:') url.protocol = 'https:';
  return url.href;
}

/** The viewer transports, best first. */
export const TRANSPORTS = Object.freeze(['websocket', 'sse', 'poll']);

/** Where the transport that worked is remembered for the session. */
const TRANSPORT_KEY = 'chatup.transport';

/** The page's sessionStorage, when it has one it may use. */
function sessionStore() {
  try {
    return globalThis.sessionStorage || null;
  } catch {
    return null;
  }
}

/** The `_public` object of a JWT, read without checking it (the server checks it). */
function publicOf(token) {
  try {
    const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    const json = JSON.parse(decodeURIComponent(escape(atob(part))));
    return json && typeof json._public === 'object' ? json._public : null;
  } catch {
    return null;
  }
}

/**
 * When a JWT ends (its `exp` claim, ms since the epoch), read without checking it; null when
 * it cannot be read.
 */
function expiryOf(token) {
  try {
    const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    const json = JSON.parse(atob(part));
    return json && typeof json.exp === 'number' && Number.isFinite(json.exp) ? json.exp * 1000 : null;
  } catch {
    return null;
  }
}

/** A subscribe token that ends sooner than this (ms) is replaced before a connection. */
const TOKEN_MARGIN = 30000;

/** The longest the long poll that asks why a viewer was refused may take, ms. */
const DIAGNOSE_TIMEOUT = 3000;

/** `url` with the subscribe token in its query (`token` null: as it is). */
function withToken(url, token) {
  if (token === null) return url;
  return `${url}${url.includes('?') ? '&' : '?'}token=${encodeURIComponent(token)}`;
}

/** What a request's timer gives in a race with the request. */
const TIMED_OUT = Symbol('timed out');

/** The shortest wait before a say() answered `unavailable` goes again, ms. */
const MIN_RETRY_DELAY = 100;

const DEFAULTS = {
  reconnectDelay: 500,
  maxReconnectDelay: 30000,
  hostFailures: 3,
  stableAfter: 5000,
  connectTimeout: 10000,
  requestTimeout: 10000,
  authTimeout: 10000,
  sendTimeout: 15000,
  maxQueued: 100,
  countInterval: 10000,
  countSettle: 3000,
  presence: true,
  transports: TRANSPORTS,
  transportFailures: 3,
  transportRetryAfter: 300000,
  pollTimeout: 60000,
};

/** `ms` as a short text for a person: "1.2 s". */
function seconds(ms) {
  return `${(ms / 1000).toFixed(1)} s`;
}

/**
 * Why a socket to `url` (without its query) ended: `host_unreachable` when it never opened
 * (a browser tells no more than 1006 for a host that is down, a refused upgrade or a proxy
 * in the way), else `connection_lost`.
 */
function socketError(what, url, openedAt, end) {
  const how = end.reason ? `${end.code}: ${end.reason}` : `${end.code}`;
  if (openedAt === null) {
    return new ChatUpError(
      'host_unreachable',
      `${what} to ${url} could not be opened (${how}): the chat host is down or unreachable${
        url.startsWith('ws') ? ', or a proxy in front of it does not pass WebSocket upgrades' : ''
      }`,
    );
  }
  return new ChatUpError('connection_lost', `${what} to ${url} closed (${how})`);
}

/**
 * A connection that closed before it opened, or a timeout while opening. `refusal`, when the
 * server said why it refused the viewer: `{kind: 'token', text}` (the subscribe token was
 * refused: a fresh one may do) or `{kind: 'stop', error}` (retrying cannot help).
 */
class OpenFailed extends Error {
  constructor(code, reason, refusal = null) {
    super(reason || `closed with ${code}`);
    this.code = code;
    this.reason = reason;
    this.refusal = refusal;
  }
}

/**
 * One room, watched and (with a token) written to.
 *
 * Events (`on(name, handler)`): `message` (a chat message), `event` (an `ev` message:
 * `join`, `leave`, `rmUserMsg`, `resync`, or an application's), `status` (`{status,
 * previous, reason, retryIn, error}`), `retry` (`{error, delay, attempt}`: an attempt
 * failed, the next is in `delay` ms), `counts` (`{channel, subCount, pubCount}`, when they
 * change: from the join answer, every `countInterval`, and `countSettle` after the subscriber
 * connects, the publisher joins the room or someone joins or leaves), `error` (a ChatUpError
 * the client recovered from or that has no caller to reject).
 */
export class ChatUp {
  constructor(options) {
    if (!options || typeof options !== 'object') {
      throw new TypeError('new ChatUp({dispatcherURL, room, jwt?, additionalChannels?}) needs an options object');
    }
    const { dispatcherURL, room, jwt, additionalChannels = [] } = options;
    if (typeof dispatcherURL !== 'string') {
      throw new TypeError('dispatcherURL must be the URL chatup\'s dispatcher answers at, e.g. "https://chat.example.com"');
    }
    const roomProblem = channelProblem(room);
    if (roomProblem) throw new TypeError(`room: ${roomProblem}`);
    if (!Array.isArray(additionalChannels)) throw new TypeError('additionalChannels must be an array of channel names');
    for (const ch of additionalChannels) {
      const problem = channelProblem(ch);
      if (problem) throw new TypeError(`additionalChannels: ${problem}`);
    }
    const channels = [room, ...additionalChannels];
    if (new Set(channels).size !== channels.length) {
      throw new TypeError('room and additionalChannels must not repeat a channel');
    }
    if (jwt !== undefined && jwt !== null && typeof jwt !== 'string' && typeof jwt !== 'function') {
      throw new TypeError('jwt must be a token string or a function returning one (or a Promise of one)');
    }
    const { getSubscribeToken = null } = options;
    if (getSubscribeToken !== null && typeof getSubscribeToken !== 'function') {
      throw new TypeError('getSubscribeToken must be a function returning the subscribe token (or a Promise of it)');
    }

    const base = globalThis.location ? globalThis.location.href : undefined;
    let dispatcher;
    try {
      dispatcher = new URL(dispatcherURL, base);
    } catch {
      throw new TypeError(`dispatcherURL "${dispatcherURL}" is not a URL`);
    }
    if (!dispatcher.pathname.endsWith('/')) dispatcher.pathname += '/';

    this.room = room;
    this.channels = channels;
    this.dispatcherURL = dispatcher.href;
    this.options = { ...DEFAULTS };
    for (const key of Object.keys(DEFAULTS)) {
      if (options[key] !== undefined) this.options[key] = options[key];
    }
    this._WebSocket = options.WebSocket || globalThis.WebSocket;
    this._EventSource = options.EventSource || globalThis.EventSource;
    this._fetch = options.fetch || (globalThis.fetch && globalThis.fetch.bind(globalThis));
    this._random = options.random || Math.random;
    // The page's origin: a cross-origin dispatcher that answers but cannot be read is
    // refusing it (CORS), and the error should name it.
    this._origin = options.origin !== undefined ? options.origin : (globalThis.location && globalThis.location.origin) || null;
    // A browser that comes back online need not sit out the rest of a backoff wait.
    this._network = options.network || (typeof globalThis.addEventListener === 'function' ? globalThis : null);
    this._onOnline = () => {
      for (const wake of [...this._sleepers]) wake();
    };
    if (!this._fetch) throw new TypeError('no fetch here: pass options.fetch');
    const wanted = this.options.transports;
    if (!Array.isArray(wanted) || wanted.length === 0) {
      throw new TypeError(`transports must be a non-empty array of ${TRANSPORTS.join(', ')}`);
    }
    for (const t of wanted) {
      if (!TRANSPORTS.includes(t)) throw new TypeError(`transports: "${t}" is not one of ${TRANSPORTS.join(', ')}`);
    }
    if (new Set(wanted).size !== wanted.length) throw new TypeError('transports must not repeat a transport');
    const present = { websocket: !!this._WebSocket, sse: !!this._EventSource, poll: true };
    const usable = wanted.filter((t) => present[t]);
    if (usable.length === 0) {
      throw new TypeError(`none of the transports ${wanted.join(', ')} is available here: pass options.WebSocket or options.EventSource`);
    }
    this._storage = options.storage !== undefined ? options.storage : sessionStore();
    /** The viewer transports this page can use, best first, and the one in use. */
    this._transport = { list: usable, index: 0, failures: 0, since: 0 };
    const remembered = this._readTransport();
    if (remembered) {
      this._transport.index = remembered.index;
      this._transport.since = remembered.since;
    }

    this._listeners = new Map();
    this._points = new ResumePoints();
    this._status = Status.DISCONNECTED;
    this._started = false;
    this._closed = false;
    this._everConnected = false;
    /** The host in use: `{id, sub, pub}`; replaced when switching. */
    this._host = null;
    /** 'ok', 'switching', 'none' (dispatcher: no host), 'unreachable' (dispatcher down). */
    this._hostState = 'ok';
    this._switching = null;
    this._sleepers = new Set();
    this._counts = null;
    this._countTimer = null;
    this._countsInFlight = false;
    /** The one pending refresh after a change (`countSettle`); a new change pushes it back. */
    this._settleTimer = null;
    this._connectedWaiters = [];
    this._fatal = null;
    /** Set when an attempt failed since the last connection: the status is then `reconnecting`. */
    this._failing = false;

    this._sub = {
      socket: null,
      open: false,
      attempt: 0,
      openFailures: 0,
      /** A refused subscribe token was replaced by a fresh one since the last connection. */
      tokenRetried: false,
      /** The last connection ended with 4002 and was reopened at once. */
      renewed: false,
    };
    /** The subscribe token: the function, and the last token it gave with its end (ms; null: unknown). */
    this._subToken = { get: getSubscribeToken, value: null, expires: null };
    this._pub = {
      jwt: jwt ?? null,
      socket: null,
      /** 'none' (no token), 'connecting', 'authenticated', 'waiting', 'authError', 'banned'. */
      state: 'none',
      everAuthenticated: false,
      running: false,
      attempt: 0,
      openFailures: 0,
      user: null,
      nextRef: 1,
      /** Orders say()s, so those sent again keep their order in the queue. */
      nextSeq: 1,
      /** Frames sent and not yet answered, by ref. */
      inFlight: new Map(),
      /** say()s waiting for the socket. */
      queue: [],
      /** say()s waiting to be sent again after `unavailable`. */
      retrying: new Set(),
      authWaiters: [],
      banReason: '',
      /** When the ban in force ends (ms since the epoch); null: never or not said. */
      banUntil: null,
      /** Lifts the ban at `banUntil`. */
      banTimer: null,
      /** Bans lifted that the server then said still hold (clock skew): spaces the retries. */
      banRetries: 0,
      /** The `banned` frame a kick sends before close 4502: `{ch, until}`. */
      kickedBy: null,
      authError: null,
      /** True between sending the token on a new socket and its answer. */
      awaitingAuth: false,
      onAuthAnswer: null,
      /** Ref of a new token sent on the open socket, until answered. */
      reauthRef: null,
      /** A token function was asked again once after `token_expired`. */
      retriedExpired: false,
    };
  }

  /** The current status (one of `Status`). */
  get status() {
    return this._status;
  }

  /** The `_public` object of the authenticated user, or null. */
  get user() {
    return this._pub.user;
  }

  /** The viewer transport in use (or tried next): `websocket`, `sse` or `poll`. */
  get transport() {
    return this._transport.list[this._transport.index];
  }

  /** The last counts: `{channel, subCount, pubCount}`, or null before the first. */
  get counts() {
    return this._counts;
  }

  /** Calls `handler` for each `name` event; returns a function that stops it. */
  on(name, handler) {
    if (typeof handler !== 'function') throw new TypeError('on(name, handler): handler must be a function');
    if (!this._listeners.has(name)) this._listeners.set(name, new Set());
    this._listeners.get(name).add(handler);
    return () => this.off(name, handler);
  }

  off(name, handler) {
    const set = this._listeners.get(name);
    if (set) set.delete(handler);
  }

  _emit(name, value) {
    const set = this._listeners.get(name);
    if (!set) return;
    for (const handler of [...set]) {
      try {
        handler(value);
      } catch (e) {
        // An application handler's bug must not stop the client.
        setTimeout(() => {
          throw e;
        });
      }
    }
  }

  /**
   * Joins the room: asks the dispatcher for a host, delivers the recent history, opens the
   * subscriber and, with a token, the publisher. Resolves once messages flow (and the token
   * was answered). Rejects on what retrying cannot fix (a bad room, a refused token), and
   * when an attempt fails (`unreachable`, `cors_refused`, `timeout`, `unavailable`,
   * `host_unreachable`, …): then the client goes on retrying with backoff, the `status` and
   * `retry` events follow it, and init() called again waits for the next attempt's outcome.
   * While the dispatcher answers `no_host` it keeps waiting (the status is `noHost`).
   */
  init() {
    if (this._closed) return Promise.reject(new ChatUpError('closed', 'this client was closed; make a new one'));
    if (this._started) {
      if (this._pub.jwt === null) return this._whenConnected();
      return this._whenConnected().then(() => this._whenAuthenticated()).then(() => this);
    }
    this._started = true;
    if (this._network) this._network.addEventListener('online', this._onOnline);
    this._update();
    const connected = this._whenConnected();
    this._start().catch((e) => this._stop(e));
    if (this._pub.jwt === null) return connected;
    return connected.then(() => this._whenAuthenticated()).then(() => this);
  }

  /**
   * Sets the publisher token (a string, or a function returning one), and authenticates.
   * Rejects when the token is refused or the publisher's connection attempt fails (the client
   * goes on trying).
   */
  authenticate(jwt) {
    if (typeof jwt !== 'string' && typeof jwt !== 'function') {
      return Promise.reject(new TypeError('authenticate(jwt): jwt must be a token string or a function returning one'));
    }
    if (this._closed) return Promise.reject(new ChatUpError('closed', 'this client was closed; make a new one'));
    const pub = this._pub;
    pub.jwt = jwt;
    pub.authError = null;
    this._clearBan();
    const answered = new Promise((resolve, reject) => pub.authWaiters.push({ resolve, reject }));
    if (pub.state === 'authenticated' && pub.socket) {
      // A fresh token on the open socket (before the old one expires, or another user).
      this._tokenValue().then((token) => {
        if (!pub.socket) return;
        pub.reauthRef = pub.nextRef++;
        pub.socket.send(JSON.stringify({ ref: pub.reauthRef, token }));
      }, (e) => this._authFailed(new ChatUpError('bad_token', `the token function failed: ${e.message}`)));
    } else if (this._started && !this._WebSocket) {
      this._startPublisher();
    } else if (this._started) {
      if (pub.state === 'authError' || pub.state === 'banned' || pub.state === 'none') pub.state = 'waiting';
      this._update();
      this._runPublisher();
    }
    return answered.then(() => pub.user);
  }

  /**
   * Sends `text` to the room (or `options.channel`). Resolves with `{ch, id, ep}` (with
   * `duplicate: true` when the server had already published it under its key, or
   * `{withheld: true}` when a moderation plugin kept it from the channel); rejects with a
   * ChatUpError whose `code` is the server's (`banned`, `rate_limited`, `too_long`,
   * `blacklisted`, …) or the client's (`not_authenticated`; `timeout`: no answer within
   * `sendTimeout`, the error's `idempotencyKey` retries it safely; `queue_full`; `closed`).
   * A message whose outcome is unknown (connection lost before the answer, `unavailable`) is
   * sent again with the same idempotency key until `sendTimeout`. `options.idempotencyKey`
   * gives the key (1-64 of `A-Z a-z 0-9 _ . : -`) instead of a fresh random one.
   */
  say(text, options = {}) {
    if (typeof text !== 'string') return Promise.reject(new ChatUpError('bad_request', 'say(text): text must be a string'));
    if (text.trim() === '') return Promise.reject(new ChatUpError('empty', 'the message is empty'));
    return this._publish({ msg: text }, options);
  }

  /** Sends an event (`ev` + `data`) to the room or `options.channel`; the token must allow events. */
  sendEvent(ev, data, options = {}) {
    if (typeof ev !== 'string' || ev === '') return Promise.reject(new ChatUpError('bad_request', 'sendEvent(ev, data): ev must be a non-empty string'));
    const frame = { ev };
    if (data !== undefined) frame.data = data;
    return this._publish(frame, options);
  }

  _publish(body, { channel = this.room, idempotencyKey } = {}) {
    const problem = channelProblem(channel);
    if (problem) return Promise.reject(new ChatUpError('bad_channel', problem));
    if (idempotencyKey !== undefined && (typeof idempotencyKey !== 'string' || !IDEMPOTENCY_KEY.test(idempotencyKey))) {
      return Promise.reject(new ChatUpError('bad_idempotency_key', 'idempotencyKey must be 1 to 64 characters of A-Z a-z 0-9 _ . : -'));
    }
    const key = idempotencyKey ?? newIdempotencyKey(globalThis.crypto, this._random);
    const pub = this._pub;
    if (this._closed) return Promise.reject(new ChatUpError('closed', 'this client was closed'));
    if (pub.jwt === null) return Promise.reject(new ChatUpError('not_authenticated', 'no token: call authenticate(jwt) first'));
    if (pub.state === 'banned' || (pub.banReason && channel === this.room)) {
      return Promise.reject(new ChatUpError('banned', pub.banReason || 'banned', { until: pub.banUntil }));
    }
    if (pub.state === 'authError') {
      const e = pub.authError;
      return Promise.reject(new ChatUpError(e ? e.code : 'bad_token', e ? e.message : 'the token was refused'));
    }
    if (pub.state === 'http') return this._postPublish(channel, body, key);
    return new Promise((resolve, reject) => {
      const entry = {
        kind: 'publish',
        seq: pub.nextSeq++,
        frame: { ch: channel, ...body, key },
        resolve,
        reject,
        timer: null,
        retryTimer: null,
        attempts: 0,
        lastError: null,
        sent: false,
      };
      entry.settle = (error, value) => {
        clearTimeout(entry.timer);
        clearTimeout(entry.retryTimer);
        pub.retrying.delete(entry);
        const i = pub.queue.indexOf(entry);
        if (i >= 0) pub.queue.splice(i, 1);
        if (error) reject(error);
        else resolve(value);
      };
      entry.timer = setTimeout(() => {
        if (entry.ref !== undefined) pub.inFlight.delete(entry.ref);
        let message = `no answer within ${this.options.sendTimeout} ms`;
        if (entry.lastError) message += ` (last: ${entry.lastError.code}: ${entry.lastError.message})`;
        if (entry.sent) message += '; it was sent and may still appear: say it again with its idempotencyKey to be sure';
        entry.settle(new ChatUpError('timeout', message, { idempotencyKey: entry.sent ? key : null }));
      }, this.options.sendTimeout);
      if (pub.state === 'authenticated' && pub.socket) {
        this._send(entry);
      } else if (pub.queue.length >= this.options.maxQueued) {
        entry.settle(new ChatUpError('queue_full', `${this.options.maxQueued} messages already wait for the connection`));
      } else {
        pub.queue.push(entry);
      }
    });
  }

  _send(entry) {
    const pub = this._pub;
    const ref = pub.nextRef++;
    entry.ref = ref;
    entry.sent = true;
    entry.attempts += 1;
    pub.inFlight.set(ref, entry);
    pub.socket.send(JSON.stringify({ ref, ...entry.frame }));
  }

  /** Sends a say() again now, or queues it (in say() order) for the next connection. */
  _resend(entry) {
    const pub = this._pub;
    entry.ref = undefined;
    if (pub.state === 'authenticated' && pub.socket) {
      this._send(entry);
      return;
    }
    const i = pub.queue.findIndex((other) => other.seq > entry.seq);
    if (i < 0) pub.queue.push(entry);
    else pub.queue.splice(i, 0, entry);
  }

  /** After `unavailable` the outcome is unknown: the same frame (same key) goes again after a backoff wait. */
  _retryLater(entry, error) {
    const pub = this._pub;
    entry.lastError = error;
    const delay = Math.max(
      MIN_RETRY_DELAY,
      backoffDelay(entry.attempts, this.options.reconnectDelay, this.options.maxReconnectDelay, this._random),
    );
    pub.retrying.add(entry);
    entry.retryTimer = setTimeout(() => {
      entry.retryTimer = null;
      pub.retrying.delete(entry);
      this._resend(entry);
    }, delay);
  }

  /** Rejects the say()s that wait for a connection or for a retry. */
  _settleWaiting(error) {
    const pub = this._pub;
    for (const entry of [...pub.queue, ...pub.retrying]) entry.settle(error);
  }

  /** The joined users of the room (their `_public` objects), paged: `{total, users, skip, limit}`. */
  async getUsers({ limit = 100, skip = 0 } = {}) {
    if (!Number.isInteger(limit) || limit < 1 || limit > 1000) throw new TypeError('getUsers: limit must be a whole number from 1 to 1000');
    if (!Number.isInteger(skip) || skip < 0) throw new TypeError('getUsers: skip must be a whole number from 0');
    return this._http('GET', `channels/${this.room}/users?skip=${skip}&limit=${limit}`);
  }

  /**
   * Fetches the room's counts now (the client also does every `countInterval` ms, and
   * `countSettle` ms after its own connection or a join or leave in the room).
   */
  async refreshCounts() {
    const answer = await this._http('GET', `channels/${this.room}`);
    this._setCounts(answer.subCount, answer.pubCount);
    return this._counts;
  }

  /** Closes both connections for good; pending say()s are rejected with `closed`. */
  close() {
    if (this._closed) return;
    this._stop(null);
  }

  // --- connection management ----------------------------------------------------------

  async _start() {
    await this._joinDispatcher([]);
    this._startCounts();
    this._runSubscriber();
    if (this._pub.jwt !== null) this._startPublisher();
  }

  /** The publisher: a WebSocket session, or, without WebSocket, `POST /pub/<ch>` per message. */
  _startPublisher() {
    if (this._WebSocket) {
      this._runPublisher();
      return;
    }
    const pub = this._pub;
    pub.state = 'http';
    this._tokenValue().then((token) => {
      pub.user = publicOf(token);
      pub.everAuthenticated = true;
      this._update();
      for (const waiter of pub.authWaiters.splice(0)) waiter.resolve();
    }, (e) => this._authFailed(new ChatUpError('bad_token', `the token function failed: ${e.message}`)));
  }

  /** One message by `POST /pub/<ch>`, sent again with its key while the outcome is unknown. */
  async _postPublish(channel, body, key) {
    const pub = this._pub;
    const deadline = Date.now() + this.options.sendTimeout;
    let lastError = null;
    for (let attempt = 1; ; attempt += 1) {
      if (this._closed) throw new ChatUpError('closed', 'the client was closed');
      let response = null;
      try {
        const token = await this._tokenValue();
        response = await this._fetch(`${httpURL(this._host.pub)}/${channel}`, {
          method: 'POST',
          headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${token}`, 'Idempotency-Key': key },
          body: JSON.stringify(body),
        });
      } catch (e) {
        lastError = new ChatUpError('unavailable', `POST /pub/${channel} failed: ${e.message}`);
      }
      if (response) {
        let answer = null;
        try {
          answer = await response.json();
        } catch {
          answer = null;
        }
        if (response.ok && answer) return answer;
        const err = answer && answer.error ? answer.error : { code: 'bad_response', message: `POST /pub/${channel} answered ${response.status}` };
        const retryAfter = Number(response.headers.get('Retry-After')) || undefined;
        lastError = new ChatUpError(err.code, err.message, { until: err.until ?? null, retryAfter });
        if (err.code !== 'unavailable') throw lastError;
      }
      const delay = Math.max(MIN_RETRY_DELAY, backoffDelay(attempt, this.options.reconnectDelay, this.options.maxReconnectDelay, this._random));
      if (Date.now() + delay > deadline) {
        throw new ChatUpError('timeout', `no answer within ${this.options.sendTimeout} ms (last: ${lastError.code}: ${lastError.message}); say it again with its idempotencyKey to be sure`, { idempotencyKey: key });
      }
      await this._sleep(delay);
      if (pub.state !== 'http') throw lastError;
    }
  }

  /**
   * POST /join: the host, the counts and the recent history. Retries with backoff until it
   * gets a host, unless the answer says retrying cannot help (bad channel).
   */
  async _joinDispatcher(exclude) {
    let attempt = 0;
    for (;;) {
      try {
        const body = exclude.length ? JSON.stringify({ exclude }) : undefined;
        const answer = await this._http('POST', `join/${this.room}`, body);
        this._useJoinAnswer(answer);
        return;
      } catch (e) {
        if (this._closed) return;
        if (e.code === 'bad_channel' || e.code === 'bad_request') throw e;
        this._emit('error', e);
        if (e.code === 'no_host' && exclude.length) {
          // Only excluded hosts are alive: one of them may be back, try them all again.
          exclude = [];
        }
        attempt += 1;
        const delay = backoffDelay(attempt, this.options.reconnectDelay, this.options.maxReconnectDelay, this._random);
        if (e.code === 'no_host') {
          this._hostState = 'none';
          this._update(e.message, { retryIn: delay, error: e });
          this._emit('retry', { error: e, delay, attempt });
        } else {
          this._hostState = 'unreachable';
          this._failed(e, delay, attempt);
        }
        await this._sleep(delay);
        if (this._closed) return;
      }
    }
  }

  _useJoinAnswer(answer) {
    if (!answer || typeof answer.host !== 'object' || !answer.host) {
      throw new ChatUpError('bad_response', 'the dispatcher\'s answer has no host');
    }
    this._host = hostEndpoints(answer.host, this.dispatcherURL);
    this._hostState = 'ok';
    this._setCounts(answer.subCount, answer.pubCount);
    const history = Array.isArray(answer.history) ? answer.history : [];
    if (this._points.historyFits(this.room, history)) {
      for (const frame of history) this._deliver(frame);
    }
  }

  /** Asks for a host other than `failedId`; both sockets move there. One request at a time. */
  _switchHost(failedId) {
    if (!this._switching) {
      this._switching = (async () => {
        this._hostState = 'switching';
        this._update();
        const before = this._host;
        try {
          await this._joinDispatcher([failedId]);
        } catch (e) {
          this._stop(e);
          return;
        }
        if (this._host && before && this._host.id !== before.id) {
          // Sockets still on the old host move now; their loops reconnect at once.
          for (const side of [this._sub, this._pub]) {
            if (side.socket) side.socket.close(CloseCode.NORMAL, 'switching host');
          }
        }
        this._update();
      })().finally(() => {
        this._switching = null;
      });
    }
    return this._switching;
  }

  /** Opens a WebSocket; resolves once open, rejects with OpenFailed. */
  _open(url, side) {
    return new Promise((resolve, reject) => {
      let ws;
      try {
        ws = new this._WebSocket(url);
      } catch (e) {
        reject(new OpenFailed(1006, e.message));
        return;
      }
      side.socket = ws;
      const timer = setTimeout(() => {
        ws.onopen = ws.onclose = ws.onerror = null;
        try {
          ws.close();
        } catch {
          // Closing a socket that never opened may throw in some runtimes.
        }
        reject(new OpenFailed(1006, `no connection within ${this.options.connectTimeout} ms (connectTimeout)`));
      }, this.options.connectTimeout);
      ws.onerror = () => {};
      ws.onopen = () => {
        clearTimeout(timer);
        resolve(ws);
      };
      ws.onclose = (event) => {
        clearTimeout(timer);
        reject(new OpenFailed(event.code || 1006, event.reason));
      };
    });
  }

  /** Resolves `{code, reason}` when `ws` closes; `onFrame` gets each text frame. */
  _pump(ws, onFrame) {
    return new Promise((resolve) => {
      ws.onmessage = (event) => {
        if (typeof event.data === 'string') this._frameOf(event.data, onFrame);
      };
      ws.onclose = (event) => resolve({ code: event.code || 1006, reason: event.reason || '' });
      // Closed before this handler was in place (CLOSING or CLOSED): no close event will come.
      if (ws.readyState >= 2) resolve({ code: 1006, reason: '' });
    });
  }

  async _runSubscriber() {
    const sub = this._sub;
    while (!this._closed) {
      const host = this._host;
      const transport = this._pickTransport();
      const since = this._points.since(this.channels);
      let openedAt = null;
      let delivered = false;
      const onFrame = (frame) => {
        delivered = true;
        this._deliver(frame);
      };
      let token;
      try {
        token = await this._subscribeToken();
      } catch (e) {
        this._stop(e);
        return;
      }
      if (this._closed) return;
      let end;
      try {
        const pump = await this._openViewer(transport, host, since, sub, token);
        openedAt = Date.now();
        sub.open = true;
        sub.openFailures = 0;
        sub.tokenRetried = false;
        this._connected(`watching over ${transport}`);
        // The counts so far were taken before this socket counted (the join answer, or the
        // room before a reconnect or host switch).
        this._settleCounts();
        end = await pump(onFrame);
      } catch (e) {
        if (!(e instanceof OpenFailed)) throw e;
        end = { code: e.code, reason: e.reason || '', refusal: e.refusal };
        if (!end.refusal && token !== null && transport !== 'poll' && !this._closed && this._host === host) {
          // A refused WebSocket or SSE stream shows no status: a long poll of the same URL does.
          end.refusal = await this._diagnose(host, since, token);
        }
      }
      sub.open = false;
      sub.socket = null;
      if (this._closed) return;
      if (this._host !== host) continue;
      if (end.refusal && end.refusal.kind === 'stop') {
        this._stop(end.refusal.error);
        return;
      }
      if (end.refusal) {
        // The subscribe token was refused (expired, bad): a fresh one, at once, once.
        if (sub.tokenRetried) {
          this._stop(new ChatUpError('bad_token', `the subscribe token was refused, a fresh one too: ${end.refusal.text}`, { status: 401 }));
          return;
        }
        sub.tokenRetried = true;
        this._dropSubscribeToken();
        continue;
      }
      if (end.code === CloseCode.SUBSCRIBE_TOKEN_EXPIRED) {
        // A normal renewal: a fresh token and back at once, resuming with since. Once in a
        // row, unless the connection lasted: a server that keeps closing at once gets backoff.
        this._dropSubscribeToken();
        const lasted = openedAt !== null && Date.now() - openedAt >= this.options.stableAfter;
        if (!sub.renewed || lasted) {
          sub.renewed = true;
          continue;
        }
      } else {
        sub.renewed = false;
      }
      if (!shouldReconnect(end.code)) {
        this._stop(new ChatUpError('refused', `the server closed the room's connection with ${end.code}: ${end.reason}`));
        return;
      }
      // A close with a code (1001 at a reload, 4000) is the server's doing, not the path's.
      const worked = openedAt !== null
        && (delivered || end.code !== 1006 || Date.now() - openedAt >= this.options.stableAfter);
      const fellBack = this._transportEnded(worked);
      const url = transport === 'websocket' ? host.sub : httpURL(host.sub);
      const what = transport === 'websocket' ? 'the room\'s connection' : `the room's ${transport} connection`;
      const error = socketError(what, url, openedAt, end);
      if (fellBack) {
        // The next transport gets its own chance at once (still with a short backoff).
        sub.attempt = 0;
      }
      if (!(await this._afterFailure(sub, host, openedAt, error))) return;
    }
  }

  /** The transport to try now: back to the best one once `transportRetryAfter` has passed. */
  _pickTransport() {
    const t = this._transport;
    if (t.index > 0 && Date.now() - t.since >= this.options.transportRetryAfter) {
      t.index = 0;
      t.failures = 0;
      this._saveTransport();
    }
    return t.list[t.index];
  }

  /**
   * Counts a connection that ended: one that never opened, or broke (1006) before its first
   * message and before `stableAfter`, is a failure of its transport; more than `transportFailures`
   * in a row move to the next one. Returns whether it moved.
   */
  _transportEnded(worked) {
    const t = this._transport;
    if (worked) {
      t.failures = 0;
      this._saveTransport();
      return false;
    }
    t.failures += 1;
    if (t.failures <= this.options.transportFailures || t.index >= t.list.length - 1) return false;
    t.index += 1;
    t.failures = 0;
    t.since = Date.now();
    this._saveTransport();
    this._emit('transport', { transport: t.list[t.index], previous: t.list[t.index - 1] });
    return true;
  }

  _readTransport() {
    try {
      const saved = JSON.parse(this._storage.getItem(`${TRANSPORT_KEY}:${this.dispatcherURL}`));
      const index = this._transport.list.indexOf(saved.transport);
      if (index < 0 || typeof saved.since !== 'number') return null;
      return { index, since: saved.since };
    } catch {
      return null;
    }
  }

  _saveTransport() {
    try {
      const t = this._transport;
      const value = JSON.stringify({ transport: t.list[t.index], since: t.since });
      this._storage.setItem(`${TRANSPORT_KEY}:${this.dispatcherURL}`, value);
    } catch {
      // No storage (or full): the choice lasts as long as this client.
    }
  }

  /**
   * Opens the room's connection over `transport`; resolves with a pump (`onFrame` gets each
   * message; resolves `{code, reason}` when the connection ends), rejects with OpenFailed.
   */
  async _openViewer(transport, host, since, side, token) {
    const path = this.channels.join('/');
    if (transport === 'websocket') {
      const ws = await this._open(withToken(host.sub + path + (since ? `?since=${since}` : ''), token), side);
      return (onFrame) => this._pump(ws, onFrame);
    }
    if (transport === 'sse') {
      return this._openSSE(withToken(`${httpURL(host.sub)}${path}?transport=sse${since ? `&since=${since}` : ''}`, token), side);
    }
    return this._openPoll(`${httpURL(host.sub)}${path}?transport=poll`, since, side, token);
  }

  /**
   * The subscribe token for the next viewer request: the one given before while it has more
   * than 30 s left, else a new one from `getSubscribeToken` (every time when its end cannot be
   * read). Null without the option. Throws a `bad_token` ChatUpError when the function fails.
   */
  async _subscribeToken() {
    const cache = this._subToken;
    if (!cache.get) return null;
    if (cache.value !== null && cache.expires !== null && cache.expires - Date.now() > TOKEN_MARGIN) return cache.value;
    let token;
    try {
      token = await cache.get();
    } catch (e) {
      throw new ChatUpError('bad_token', `the subscribe token function failed: ${e && e.message ? e.message : e}`);
    }
    if (typeof token !== 'string' || token === '') {
      throw new ChatUpError('bad_token', `the subscribe token function failed: it gave ${token === '' ? 'an empty string' : typeof token}, not a token string`);
    }
    cache.value = token;
    cache.expires = expiryOf(token);
    return token;
  }

  /** Forgets the subscribe token: the next request asks `getSubscribeToken` for a new one. */
  _dropSubscribeToken() {
    this._subToken.value = null;
    this._subToken.expires = null;
  }

  /**
   * What a viewer request's refusal (an HTTP answer that is not OK) means: `{kind: 'token',
   * text}` for a refused subscribe token (401, with a token function to ask for another),
   * `{kind: 'stop', error}` for a refusal retrying cannot change (403 `forbidden` or `banned`;
   * 401 without a token function), null for anything else (retried as before).
   */
  async _viewerRefusal(response) {
    if (response.status !== 401 && response.status !== 403) return null;
    let text = '';
    try {
      text = String(await response.text()).trim();
    } catch {
      // No body: the status says enough.
    }
    const word = text.split(/[:\s]/)[0];
    const reason = text || `HTTP ${response.status}`;
    const watched = this.channels.join(', ');
    if (response.status === 401) {
      if (this._subToken.get) return { kind: 'token', text: reason };
      const code = ['token_required', 'bad_token', 'token_expired'].includes(word) ? word : 'token_required';
      return {
        kind: 'stop',
        error: new ChatUpError(code, `the server wants a subscribe token to watch ${watched}: ${reason} (give getSubscribeToken)`, { status: 401 }),
      };
    }
    if (word !== 'forbidden' && word !== 'banned') return null;
    return { kind: 'stop', error: new ChatUpError(word, `the server refused to let this client watch ${watched}: ${reason}`, { status: 403 }) };
  }

  /**
   * Why a WebSocket or SSE viewer with a subscribe token did not open: one long poll of the
   * same URL (same token and since), whose answer carries the status those cannot show. Its
   * refusal (see `_viewerRefusal`), or null when it is admitted (the poll is given up at once),
   * fails otherwise or does not answer within a few seconds.
   */
  async _diagnose(host, since, token) {
    const url = withToken(`${httpURL(host.sub)}${this.channels.join('/')}?transport=poll${since ? `&since=${since}` : ''}`, token);
    const controller = typeof AbortController === 'function' ? new AbortController() : null;
    let timer;
    // Raced as well as aborted: a fetch given in the options may not heed the signal.
    const timedOut = new Promise((resolve) => {
      timer = setTimeout(() => {
        if (controller) controller.abort();
        resolve(null);
      }, Math.min(this.options.connectTimeout, DIAGNOSE_TIMEOUT));
    });
    const ask = (async () => {
      const init = { cache: 'no-store' };
      if (controller) init.signal = controller.signal;
      const response = await this._fetch(url, init);
      if (response.ok) {
        // Admitted: the token is not why. Its messages come on the next attempt.
        if (controller) controller.abort();
        return null;
      }
      return this._viewerRefusal(response);
    })().catch(() => null);
    try {
      return await Promise.race([ask, timedOut]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** An EventSource whose reconnects the client makes itself (backoff, host switches, since). */
  _openSSE(url, side) {
    return new Promise((resolve, reject) => {
      let es;
      try {
        es = new this._EventSource(url);
      } catch (e) {
        reject(new OpenFailed(1006, e.message));
        return;
      }
      let ended = null;
      let timer = null;
      side.socket = {
        close: (code = CloseCode.NORMAL, reason = '') => {
          es.close();
          clearTimeout(timer);
          if (ended) ended({ code, reason });
          else reject(new OpenFailed(code, reason));
        },
      };
      timer = setTimeout(() => {
        es.close();
        reject(new OpenFailed(1006, `no stream within ${this.options.connectTimeout} ms (connectTimeout)`));
      }, this.options.connectTimeout);
      es.onerror = () => {
        clearTimeout(timer);
        es.close();
        reject(new OpenFailed(1006, 'the SSE stream did not open'));
      };
      es.onopen = () => {
        clearTimeout(timer);
        resolve((onFrame) => new Promise((done) => {
          ended = done;
          es.onmessage = (event) => this._frameOf(event.data, onFrame);
          es.addEventListener('close', (event) => {
            let close = {};
            try {
              close = JSON.parse(event.data);
            } catch {
              // A close event without its JSON: an ordinary drop.
            }
            es.close();
            done({ code: close.code || 1006, reason: close.reason || '' });
          });
          es.onerror = () => {
            es.close();
            done({ code: 1006, reason: 'the SSE stream ended' });
          };
        }));
      };
    });
  }

  /**
   * Long-polls: resolves with a pump once the first poll is answered; each answer's `since` is
   * the next poll's.
   */
  async _openPoll(base, since, side, token) {
    let controller = null;
    let closedWith = null;
    side.socket = {
      close: (code = CloseCode.NORMAL, reason = '') => {
        closedWith = { code, reason };
        if (controller) controller.abort();
      },
    };
    let firstPoll = true;
    const poll = async (at) => {
      controller = new AbortController();
      // The server holds a poll up to chatup_poll_timeout (25 s): pollTimeout is longer.
      const timer = setTimeout(() => controller.abort(), this.options.pollTimeout);
      try {
        // Each poll carries a token with time left: the first the one given, then as cached.
        let current = token;
        if (!firstPoll) {
          try {
            current = await this._subscribeToken();
          } catch (e) {
            throw new OpenFailed(1006, e.message, { kind: 'stop', error: e });
          }
        }
        firstPoll = false;
        const response = await this._fetch(withToken(base + (at ? `&since=${at}` : ''), current), {
          signal: controller.signal,
          cache: 'no-store',
        });
        if (!response.ok) {
          const refusal = await this._viewerRefusal(response);
          throw new OpenFailed(1006, refusal && refusal.error ? refusal.error.message : `the poll was answered ${response.status}`, refusal);
        }
        const answer = await response.json();
        if (!answer || !Array.isArray(answer.messages)) throw new OpenFailed(1006, 'a poll answer that is not chatup\'s');
        return answer;
      } catch (e) {
        if (closedWith) throw new OpenFailed(closedWith.code, closedWith.reason);
        if (e instanceof OpenFailed) throw e;
        throw new OpenFailed(1006, e.message);
      } finally {
        clearTimeout(timer);
      }
    };
    const first = await poll(since);
    return async (onFrame) => {
      let answer = first;
      for (;;) {
        for (const frame of answer.messages) if (frame && typeof frame === 'object') onFrame(frame);
        const next = typeof answer.since === 'string' && answer.since ? answer.since : this._points.since(this.channels);
        try {
          answer = await poll(next);
        } catch (e) {
          return { code: e.code, reason: e.reason || e.message, refusal: e.refusal || null };
        }
      }
    };
  }

  /** Parses one message's JSON and hands it on. */
  _frameOf(data, onFrame) {
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      this._emit('error', new ChatUpError('bad_frame', `a frame that is not JSON: ${String(data).slice(0, 80)}`));
      return;
    }
    if (frame && typeof frame === 'object') onFrame(frame);
  }

  /**
   * Bookkeeping after a connection ended with `error`: backoff, host switching. Returns false
   * when the client stopped meanwhile.
   */
  async _afterFailure(side, host, openedAt, error) {
    if (openedAt === null) {
      side.openFailures += 1;
      side.attempt += 1;
    } else {
      side.attempt = Date.now() - openedAt >= this.options.stableAfter ? 1 : side.attempt + 1;
    }
    if (side.openFailures >= this.options.hostFailures) {
      side.openFailures = 0;
      this._failed(error, null, side.attempt);
      await this._switchHost(host.id);
      if (this._closed) return false;
      if (this._host !== host) return true;
    }
    const delay = backoffDelay(side.attempt, this.options.reconnectDelay, this.options.maxReconnectDelay, this._random);
    this._failed(error, delay, side.attempt);
    await this._sleep(delay);
    return !this._closed;
  }

  /**
   * An attempt failed with `error`; the next one is in `delay` ms (null: after asking the
   * dispatcher for another host). Whoever waits for this attempt hears why; the status says
   * `reconnecting`, why and when.
   */
  _failed(error, delay, attempt) {
    this._failing = true;
    for (const waiter of this._connectedWaiters.splice(0)) waiter.reject(error);
    const when = delay === null ? 'asking the dispatcher for another host' : `retrying in ${seconds(delay)}`;
    this._update(`${error.message}; ${when}`, { retryIn: delay, error });
    if (delay !== null) this._emit('retry', { error, delay, attempt });
  }

  _deliver(frame) {
    if (typeof frame.ch !== 'string' || !this.channels.includes(frame.ch)) return;
    const verdict = this._points.accept(frame);
    if (verdict === 'duplicate') return;
    if (typeof frame.msg === 'string') this._emit('message', frame);
    else if (typeof frame.ev === 'string') {
      this._emit('event', frame);
      if (frame.ch === this.room && (frame.ev === 'join' || frame.ev === 'leave')) this._settleCounts();
    }
  }

  async _runPublisher() {
    const pub = this._pub;
    if (pub.running) return;
    pub.running = true;
    try {
      while (!this._closed && pub.jwt !== null && pub.state !== 'authError' && pub.state !== 'banned') {
        const host = this._host;
        pub.state = 'connecting';
        this._update();
        let openedAt = null;
        let end;
        try {
          const ws = await this._open(host.pub, pub);
          openedAt = Date.now();
          pub.openFailures = 0;
          end = await this._publisherSession(ws);
        } catch (e) {
          if (!(e instanceof OpenFailed)) throw e;
          end = { code: e.code, reason: e.reason || '' };
        }
        pub.socket = null;
        this._dropInFlight();
        if (this._closed) return;
        if (pub.state === 'authError' || pub.state === 'banned') return;
        if (end.code === CloseCode.BANNED) {
          const kick = pub.kickedBy;
          pub.kickedBy = null;
          this._banned(kick ? banText(kick.ch, kick.until) : end.reason || 'banned', kick ? kick.until : undefined);
          return;
        }
        if (!shouldReconnect(end.code)) {
          if (end.code === CloseCode.TOKEN_EXPIRED && typeof pub.jwt === 'function' && !pub.retriedExpired) {
            // A token function can give a fresh token: one more go, without waiting.
            pub.retriedExpired = true;
            continue;
          }
          const code = end.code === CloseCode.TOKEN_EXPIRED ? 'token_expired' : 'bad_token';
          this._authFailed(pub.authError || new ChatUpError(code, end.reason || `closed with ${end.code}`));
          return;
        }
        pub.state = 'waiting';
        if (host !== this._host) continue;
        const error = socketError('the publisher connection', host.pub, openedAt, end);
        // A token waits for this attempt (init(), authenticate()): say it failed.
        for (const waiter of pub.authWaiters.splice(0)) waiter.reject(error);
        if (!(await this._afterFailure(pub, host, openedAt, error))) return;
      }
    } finally {
      pub.running = false;
    }
  }

  /** Authenticates on an open publisher socket, joins the room, then serves it until it closes. */
  async _publisherSession(ws) {
    const pub = this._pub;
    const closed = this._pump(ws, (frame) => this._onPublisherFrame(frame));
    let token;
    try {
      token = await this._tokenValue();
    } catch (e) {
      this._authFailed(new ChatUpError('bad_token', `the token function failed: ${e.message}`));
      ws.close(CloseCode.NORMAL);
      return closed;
    }
    pub.awaitingAuth = true;
    const timer = setTimeout(() => {
      if (pub.awaitingAuth) ws.close(CloseCode.NORMAL, 'no answer to the token');
    }, this.options.authTimeout);
    ws.send(token);
    const end = await Promise.race([closed, this._authAnswered()]);
    clearTimeout(timer);
    if (end) return end;
    return closed;
  }

  _authAnswered() {
    return new Promise((resolve) => {
      this._pub.onAuthAnswer = () => resolve(null);
    });
  }

  async _tokenValue() {
    const jwt = this._pub.jwt;
    const token = typeof jwt === 'function' ? await jwt() : jwt;
    if (typeof token !== 'string' || token === '') throw new Error('no token string');
    return token;
  }

  _onPublisherFrame(frame) {
    const pub = this._pub;
    if (pub.awaitingAuth) {
      pub.awaitingAuth = false;
      const answered = pub.onAuthAnswer;
      pub.onAuthAnswer = null;
      if (frame.type === 'auth') {
        this._authenticated(frame.user);
      } else {
        // The server closes right after (4500/4501); the close ends the session.
        pub.authError = new ChatUpError(frame.code || 'bad_token', frame.message || 'the token was refused');
      }
      if (answered) answered();
      return;
    }
    if (frame.ref !== undefined && frame.ref === pub.reauthRef) {
      // The answer to a new token sent on the open socket: an error is followed by a close.
      pub.reauthRef = null;
      if (frame.type === 'error') pub.authError = new ChatUpError(frame.code || 'bad_token', frame.message);
      if (frame.type === 'error' && frame.code === 'banned') pub.kickedBy = { ch: this.room, until: untilOf(frame) };
      return;
    }
    const entry = frame.ref !== undefined ? pub.inFlight.get(frame.ref) : undefined;
    if (entry) pub.inFlight.delete(frame.ref);
    if (frame.type === 'joined' && frame.ch === this.room) {
      pub.banRetries = 0;
      // This user now counts as a chatter.
      this._settleCounts();
    }
    if (frame.type === 'ack') {
      pub.banRetries = 0;
      if (entry && entry.kind === 'publish') {
        const value = frame.withheld ? { ch: entry.frame.ch, withheld: true } : { ch: entry.frame.ch, id: frame.id, ep: frame.ep };
        if (frame.duplicate === true) value.duplicate = true;
        entry.settle(null, value);
      }
    } else if (frame.type === 'error') {
      const until = untilOf(frame);
      const error = new ChatUpError(frame.code || 'error', frame.message, { retryAfter: frame.retryAfter, until });
      if (entry && entry.kind === 'publish' && error.code === 'unavailable') this._retryLater(entry, error);
      else if (entry && entry.kind === 'publish') {
        entry.settle(error);
        // Refused as banned from the room (the kick may not have reached this host): the
        // room is banned until the server's time, as for a refused join.
        if (error.code === 'banned' && until !== undefined && entry.frame.ch === this.room) this._joinRefused(this.room, error, until);
      } else if (entry && entry.kind === 'join') this._joinRefused(entry.channel, error, until);
      else if (error.code === 'banned' && frame.ref === undefined) {
        // A kick: the frame before close 4502 says from which channel and until when.
        pub.kickedBy = { ch: typeof frame.ch === 'string' ? frame.ch : this.room, until };
      } else this._emit('error', error);
    } else if (frame.type === 'auth') {
      // The answer to a new token on the open socket (the server does not echo its ref).
      pub.reauthRef = null;
      this._authenticated(frame.user);
    }
    // 'joined' and 'left' need nothing more.
  }

  _authenticated(user) {
    const pub = this._pub;
    pub.user = user ?? null;
    pub.state = 'authenticated';
    pub.everAuthenticated = true;
    pub.authError = null;
    pub.retriedExpired = false;
    if (this.options.presence) this._joinRoom();
    for (const entry of pub.queue.splice(0)) this._send(entry);
    this._update();
    for (const waiter of pub.authWaiters.splice(0)) waiter.resolve();
  }

  /** Joins the room on the open publisher socket, so the user counts as a chatter. */
  _joinRoom() {
    const pub = this._pub;
    const ref = pub.nextRef++;
    pub.inFlight.set(ref, { kind: 'join', channel: this.room });
    pub.socket.send(JSON.stringify({ ref, join: this.room }));
  }

  _joinRefused(channel, error, until) {
    if (error.code === 'banned' && channel === this.room) {
      const pub = this._pub;
      const reason = until === undefined ? error.message : banText(channel, until);
      pub.banReason = reason;
      this._scheduleLift(error.until, () => {
        // Joining again says whether the ban is over (or shows the new term).
        pub.banReason = '';
        if (pub.state === 'authenticated' && pub.socket && this.options.presence) this._joinRoom();
        this._update();
      });
      this._update(reason);
      for (const waiter of pub.authWaiters.splice(0)) waiter.reject(error);
    } else {
      this._emit('error', error);
    }
  }

  _banned(reason, until) {
    const pub = this._pub;
    pub.state = 'banned';
    pub.banReason = reason;
    const error = new ChatUpError('banned', reason, { until });
    this._settleWaiting(error);
    for (const waiter of pub.authWaiters.splice(0)) waiter.reject(error);
    this._scheduleLift(until, () => {
      // The ban is over: the publisher connects again (and says if it is not).
      pub.banReason = '';
      if (pub.state === 'banned') pub.state = 'waiting';
      this._update();
      this._runPublisher();
    });
    this._update(reason);
  }

  /**
   * Calls `lift` once `until` (ms since the epoch) has passed; a permanent ban (`null`) or
   * one of unknown end (`undefined`) is never lifted here. A ban the server still holds
   * after its end (the clocks differ) is tried again later and later.
   */
  _scheduleLift(until, lift) {
    const pub = this._pub;
    clearTimeout(pub.banTimer);
    pub.banTimer = null;
    pub.banUntil = typeof until === 'number' ? until : null;
    if (typeof until !== 'number' || this._closed) return;
    const floor = pub.banRetries > 0 ? Math.min(1000 * 2 ** (pub.banRetries - 1), 30000) : 0;
    const wait = () => {
      const left = Math.max(until - Date.now(), floor);
      pub.banTimer = setTimeout(() => {
        pub.banTimer = null;
        if (this._closed) return;
        if (until - Date.now() > 0) return wait(); // a wait longer than a timer can hold
        pub.banRetries += 1;
        pub.banUntil = null;
        lift();
      }, Math.min(left, MAX_TIMER));
    };
    wait();
  }

  /** Forgets the ban (a new token, or the room joined again). */
  _clearBan() {
    const pub = this._pub;
    clearTimeout(pub.banTimer);
    pub.banTimer = null;
    pub.banReason = '';
    pub.banUntil = null;
  }

  _authFailed(error) {
    const pub = this._pub;
    pub.state = 'authError';
    pub.authError = error;
    this._settleWaiting(error);
    for (const waiter of pub.authWaiters.splice(0)) waiter.reject(error);
    this._update(error.message);
  }

  /**
   * Frames sent on a socket that closed: their outcome is unknown, so say()s go again, with
   * their key, on the next connection (until their deadline).
   */
  _dropInFlight() {
    const pub = this._pub;
    pub.awaitingAuth = false;
    for (const [ref, entry] of pub.inFlight) {
      pub.inFlight.delete(ref);
      if (entry.kind === 'publish') this._resend(entry);
    }
  }

  _whenAuthenticated() {
    const pub = this._pub;
    if ((pub.state === 'authenticated' && !pub.awaitingAuth) || (pub.state === 'http' && pub.everAuthenticated)) {
      return Promise.resolve();
    }
    if (pub.state === 'authError' || pub.state === 'banned') {
      const e = pub.state === 'banned' ? new ChatUpError('banned', pub.banReason, { until: pub.banUntil }) : pub.authError;
      return Promise.reject(e || new ChatUpError('bad_token', 'the token was refused'));
    }
    return new Promise((resolve, reject) => pub.authWaiters.push({ resolve, reject }));
  }

  _whenConnected() {
    if (this._sub.open) return Promise.resolve(this);
    if (this._fatal) return Promise.reject(this._fatal);
    return new Promise((resolve, reject) => this._connectedWaiters.push({ resolve, reject }));
  }

  _connected(reason = '') {
    this._everConnected = true;
    this._failing = false;
    this._hostState = 'ok';
    this._update(reason);
    for (const waiter of this._connectedWaiters.splice(0)) waiter.resolve(this);
  }

  _stop(error) {
    if (this._closed) return;
    this._closed = true;
    this._fatal = error;
    clearTimeout(this._countTimer);
    this._countTimer = null;
    clearTimeout(this._settleTimer);
    this._settleTimer = null;
    clearTimeout(this._pub.banTimer);
    this._pub.banTimer = null;
    if (this._network) this._network.removeEventListener('online', this._onOnline);
    for (const wake of [...this._sleepers]) wake();
    for (const side of [this._sub, this._pub]) {
      if (side.socket) {
        try {
          side.socket.close(CloseCode.NORMAL, 'closed');
        } catch {
          // Not open yet: nothing to close.
        }
      }
    }
    const reason = error || new ChatUpError('closed', 'the client was closed');
    const pub = this._pub;
    this._settleWaiting(reason);
    for (const [, entry] of pub.inFlight) if (entry.kind === 'publish') entry.settle(reason);
    pub.inFlight.clear();
    for (const waiter of pub.authWaiters.splice(0)) waiter.reject(reason);
    for (const waiter of this._connectedWaiters.splice(0)) waiter.reject(reason);
    if (error) this._emit('error', error);
    this._update(error ? error.message : 'closed');
  }

  _sleep(ms) {
    return new Promise((resolve) => {
      const wake = () => {
        clearTimeout(timer);
        this._sleepers.delete(wake);
        resolve();
      };
      const timer = setTimeout(wake, ms);
      this._sleepers.add(wake);
    });
  }

  // --- status and counts ----------------------------------------------------------------

  _computeStatus() {
    if (this._closed || !this._started) return Status.DISCONNECTED;
    if (this._hostState === 'switching') return Status.SWITCHING_HOST;
    if (this._hostState === 'none') return Status.NO_HOST;
    if (!this._sub.open) return this._everConnected || this._failing ? Status.RECONNECTING : Status.CONNECTING;
    const pub = this._pub;
    switch (pub.state) {
      case 'authenticated':
        return pub.banReason ? Status.BANNED : Status.AUTHENTICATED;
      case 'http':
        if (pub.banReason) return Status.BANNED;
        return pub.everAuthenticated ? Status.AUTHENTICATED : Status.CONNECTED;
      case 'connecting':
        return pub.everAuthenticated ? Status.RECONNECTING : Status.CONNECTED;
      case 'waiting':
        return Status.RECONNECTING;
      case 'authError':
        return Status.AUTH_ERROR;
      case 'banned':
        return Status.BANNED;
      default:
        return Status.CONNECTED;
    }
  }

  /** Emits `status` when the status changed; `retryIn` (ms) and `error` say why and when, for retries. */
  _update(reason = '', { retryIn = null, error = null } = {}) {
    const status = this._computeStatus();
    if (status === this._status) return;
    const previous = this._status;
    this._status = status;
    this._emit('status', { status, previous, reason, retryIn, error });
  }

  _setCounts(subCount, pubCount) {
    if (typeof subCount !== 'number' || typeof pubCount !== 'number') return;
    const old = this._counts;
    if (old && old.subCount === subCount && old.pubCount === pubCount) return;
    this._counts = { channel: this.room, subCount, pubCount };
    this._emit('counts', this._counts);
  }

  /** The one count-refresh loop: a timer, never two, stopped by close(). */
  _startCounts() {
    if (this._countTimer !== null || this._closed || !(this.options.countInterval > 0)) return;
    const jittered = this.options.countInterval * (0.8 + 0.4 * this._random());
    this._countTimer = setTimeout(async () => {
      if (!this._countsInFlight) {
        this._countsInFlight = true;
        try {
          await this.refreshCounts();
        } catch (e) {
          this._emit('error', e);
        } finally {
          this._countsInFlight = false;
        }
      }
      this._countTimer = null;
      this._startCounts();
    }, jittered);
  }

  /**
   * After a change in the room (this page's own connection or join, someone's join or
   * leave): one refresh once the hosts have reported it. They report every second or so and
   * the dispatcher caches its answer as long, so asking at once gets the old numbers. A burst
   * of changes gives one refresh, `countSettle` after the last; the spread (up to a third
   * more) keeps a big room's pages, which all see the same join, from asking at once.
   */
  _settleCounts() {
    const settle = this.options.countSettle;
    if (this._closed || !(settle > 0)) return;
    clearTimeout(this._settleTimer);
    const delay = Math.min(settle * (1 + this._random() / 3), MAX_TIMER);
    this._settleTimer = setTimeout(() => {
      this._settleTimer = null;
      if (this._closed) return;
      this.refreshCounts().catch((e) => {
        if (!this._closed) this._emit('error', e);
      });
    }, delay);
  }

  /**
   * A dispatcher request, answered within `requestTimeout` (a dispatcher that accepts the
   * connection and never answers must not hold the client for ever).
   */
  async _http(method, path, body) {
    const url = new URL(path, this.dispatcherURL).href;
    const init = { method, headers: {} };
    if (body !== undefined) {
      init.body = body;
      init.headers['content-type'] = 'application/json';
    }
    const limit = this.options.requestTimeout;
    const controller = typeof AbortController === 'function' ? new AbortController() : null;
    if (controller) init.signal = controller.signal;
    let timer;
    // Raced as well as aborted: a fetch given in the options may not heed the signal.
    const timedOut = new Promise((resolve) => {
      timer = setTimeout(() => {
        if (controller) controller.abort();
        resolve(TIMED_OUT);
      }, limit);
    });
    const timeoutError = () =>
      new ChatUpError(
        'timeout',
        `the dispatcher at ${this.dispatcherURL} did not answer ${method} /${path.split('?')[0]} within ${limit} ms (requestTimeout): it accepts connections but is stuck or overloaded, or a proxy in front of it is`,
      );
    let response;
    let answer = null;
    try {
      try {
        response = await Promise.race([this._fetch(url, init), timedOut]);
      } catch (e) {
        if (controller && controller.signal.aborted) throw timeoutError();
        throw await this._fetchFailed(method, path, e);
      }
      if (response === TIMED_OUT) throw timeoutError();
      try {
        answer = await Promise.race([response.json(), timedOut]);
      } catch {
        // Not JSON: a proxy's error page; the status says enough.
      }
      if (answer === TIMED_OUT) throw timeoutError();
    } finally {
      clearTimeout(timer);
    }
    if (!response.ok) {
      const error = answer && answer.error;
      const retry = Number(response.headers && response.headers.get && response.headers.get('retry-after'));
      throw new ChatUpError(
        (error && error.code) || (response.status >= 500 ? 'unavailable' : `http_${response.status}`),
        (error && error.message) || `${method} ${path}: HTTP ${response.status}`,
        { status: response.status, retryAfter: Number.isFinite(retry) && retry > 0 ? retry : null },
      );
    }
    if (answer === null) throw new ChatUpError('bad_response', `${method} ${path}: the answer is not JSON`);
    return answer;
  }

  /**
   * Why a dispatcher request failed with `error`. A browser gives the same TypeError for a
   * host that does not answer and for an answer CORS keeps from the page; a `no-cors` request
   * tells them apart: it succeeds (opaquely) whenever the host answers at all.
   */
  async _fetchFailed(method, path, error) {
    const dispatcher = new URL(this.dispatcherURL);
    const origin = this._origin && this._origin !== 'null' ? this._origin : null;
    const what = `${method} /${path.split('?')[0]}`;
    if (origin && origin !== dispatcher.origin) {
      if (await this._answers(dispatcher.href)) {
        return new ChatUpError(
          'cors_refused',
          `the dispatcher at ${this.dispatcherURL} answers, but the browser does not let this page read its answer to ${what} (${error.message}): it does not allow this page's origin (CORS); add "${origin}" to dispatch.cors_origins in the dispatcher's config`,
        );
      }
      if (origin.startsWith('https:') && dispatcher.protocol === 'http:') {
        return new ChatUpError(
          'unreachable',
          `cannot reach the dispatcher at ${this.dispatcherURL} (${error.message}): this page is https and the dispatcher http, which browsers block (mixed content); give dispatcherURL an https address`,
        );
      }
    }
    return new ChatUpError(
      'unreachable',
      `cannot reach the dispatcher at ${this.dispatcherURL} (${error.message}): nothing answers there; check that it runs and that dispatcherURL is its address (the browser does not say whether the name did not resolve, the connection was refused or the network is down)`,
    );
  }

  /** Whether anything answers HTTP at `url`: a `no-cors` GET, within `requestTimeout`. */
  async _answers(url) {
    const controller = typeof AbortController === 'function' ? new AbortController() : null;
    let timer;
    const timedOut = new Promise((resolve) => {
      timer = setTimeout(() => {
        if (controller) controller.abort();
        resolve(false);
      }, this.options.requestTimeout);
    });
    try {
      const init = { method: 'GET', mode: 'no-cors', cache: 'no-store', credentials: 'omit' };
      if (controller) init.signal = controller.signal;
      return await Promise.race([this._fetch(url, init).then(() => true, () => false), timedOut]);
    } finally {
      clearTimeout(timer);
    }
  }
}

// The plain-script build exposes only `window.ChatUp`: everything else hangs off it.
Object.assign(ChatUp, { Status, CloseCode, ChatUpError, ResumePoints, backoffDelay, shouldReconnect, channelProblem, hostEndpoints, newIdempotencyKey });

export default ChatUp;
