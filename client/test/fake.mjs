// A scripted stand-in for the network, for unit tests of the client's state machine: sockets
// the test opens, answers and closes by hand, and a dispatcher that answers from a table.
// The end-to-end tests (test/e2e/) run the client against the real servers instead.

import { ChatUp } from '../src/chatup.js';

export function makeWorld() {
  const sockets = [];
  const requests = [];
  const routes = [];

  class FakeWebSocket {
    constructor(url) {
      this.url = url;
      this.sent = [];
      this.readyState = 0;
      this.closedByClient = null;
      sockets.push(this);
    }

    send(data) {
      if (this.readyState !== 1) throw new Error(`send on a socket in state ${this.readyState}`);
      this.sent.push(data);
    }

    close(code = 1000, reason = '') {
      if (this.readyState === 3) return;
      const wasOpen = this.readyState === 1;
      this.readyState = 3;
      this.closedByClient = { code, reason };
      // A socket closed before it opened reports 1006, as browsers do.
      queueMicrotask(() => this.onclose && this.onclose({ code: wasOpen ? code : 1006, reason }));
    }

    // The server's side.
    accept() {
      this.readyState = 1;
      this.onopen && this.onopen();
    }

    refuse() {
      this.readyState = 3;
      this.onclose && this.onclose({ code: 1006, reason: '' });
    }

    push(frame) {
      this.onmessage && this.onmessage({ data: typeof frame === 'string' ? frame : JSON.stringify(frame) });
    }

    serverClose(code, reason = '') {
      this.readyState = 3;
      this.onclose && this.onclose({ code, reason });
    }

    frames() {
      return this.sent.map((s) => {
        try {
          return JSON.parse(s);
        } catch {
          return s;
        }
      });
    }
  }

  class FakeEventSource {
    constructor(url) {
      this.url = url;
      this.kind = 'sse';
      this.readyState = 0;
      this.closedByClient = false;
      this.listeners = new Map();
      sockets.push(this);
    }

    addEventListener(name, handler) {
      this.listeners.set(name, handler);
    }

    close() {
      this.readyState = 2;
      this.closedByClient = true;
    }

    // The server's side.
    accept() {
      this.readyState = 1;
      this.onopen && this.onopen();
    }

    refuse() {
      this.readyState = 2;
      this.onerror && this.onerror({});
    }

    push(frame) {
      this.onmessage && this.onmessage({ data: typeof frame === 'string' ? frame : JSON.stringify(frame) });
    }

    /** The `close` event the module sends before it ends a stream, then the end. */
    serverClose(code, reason = '') {
      const handler = this.listeners.get('close');
      if (handler) handler({ data: JSON.stringify({ code, reason }) });
      this.drop();
    }

    drop() {
      if (this.readyState === 2) return;
      this.onerror && this.onerror({});
    }
  }

  async function fetch(url, init = {}) {
    const u = new URL(url);
    const request = {
      method: init.method || 'GET',
      path: u.pathname + u.search,
      body: init.body ? JSON.parse(init.body) : undefined,
      mode: init.mode || 'cors',
      headers: init.headers || {},
      signal: init.signal || null,
    };
    requests.push(request);
    for (const route of routes) {
      if (route.method === request.method && route.match(request.path)) {
        const answer = await route.answer(request);
        if (answer instanceof Error) throw answer;
        const { status = 200, body, headers = {} } = answer;
        return {
          ok: status >= 200 && status < 300,
          status,
          headers: { get: (name) => headers[name.toLowerCase()] ?? null },
          json: async () => {
            if (typeof body === 'string') return JSON.parse(body);
            return body;
          },
          text: async () => (typeof body === 'string' ? body : JSON.stringify(body)),
        };
      }
    }
    const missing = { error: { code: 'not_found', message: request.path } };
    return { ok: false, status: 404, headers: { get: () => null }, json: async () => missing, text: async () => JSON.stringify(missing) };
  }

  return {
    WebSocket: FakeWebSocket,
    EventSource: FakeEventSource,
    fetch,
    sockets,
    requests,
    /** Answers `method path-prefix` with `answer(request)` → {status, body} or an Error. */
    route(method, prefix, answer) {
      routes.unshift({ method, match: (path) => path.startsWith(prefix), answer });
    },
    /** Sockets whose URL contains `part`. */
    socketsTo(part) {
      return sockets.filter((s) => s.url.includes(part));
    },
    /** The newest socket whose URL contains `part`, once there is one beyond `after`. */
    async nextSocket(part, after = 0) {
      await waitFor(() => this.socketsTo(part).length > after, `a socket to ${part} (#${after + 1})`);
      return this.socketsTo(part)[after];
    },
  };
}

export function host(id, base = '') {
  return { id, url: base, sub: `${base}/sub/`, pub: `${base}/pub`, post: `${base}/pub/` };
}

export function joinAnswer(id, { history = [], subCount = 1, pubCount = 0, base = '' } = {}) {
  return { status: 200, body: { host: host(id, base), channel: 'lobby', subCount, pubCount, history } };
}

export function msg(id, text, ep = 7, user = { name: 'ann' }) {
  return { ch: 'lobby', id, ep, t: 1700000000000 + id, user, msg: text };
}

export async function waitFor(predicate, what, timeout = 2000) {
  const start = Date.now();
  for (;;) {
    if (predicate()) return;
    if (Date.now() - start > timeout) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Where the fake dispatcher answers. */
export const DISPATCHER = 'http://chat.test:8080/';

/**
 * A client of room `lobby` in `world`, with fast retries and no count polling; what it emits
 * is collected in `messages`, `statuses` and `retries`.
 */
export function client(world, options = {}) {
  const chat = new ChatUp({
    dispatcherURL: DISPATCHER,
    room: 'lobby',
    WebSocket: world.WebSocket,
    EventSource: world.EventSource,
    fetch: world.fetch,
    storage: null,
    reconnectDelay: 2,
    maxReconnectDelay: 5,
    random: () => 0.5,
    countInterval: 0,
    countSettle: 0,
    hostFailures: 100,
    ...options,
  });
  const messages = [];
  const statuses = [];
  const retries = [];
  chat.on('message', (m) => messages.push(m));
  chat.on('status', (s) => statuses.push(s));
  chat.on('retry', (r) => retries.push(r));
  return { chat, messages, statuses, retries };
}
