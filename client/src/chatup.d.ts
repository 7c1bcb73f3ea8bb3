// Type declarations of the chatup browser client (src/chatup.js, and dist/chatup.js as
// `window.ChatUp`).

/** The client's state, as one value for a status line. */
export declare const Status: {
  readonly CONNECTING: 'connecting';
  readonly CONNECTED: 'connected';
  readonly AUTHENTICATED: 'authenticated';
  readonly RECONNECTING: 'reconnecting';
  readonly SWITCHING_HOST: 'switchingHost';
  readonly DISCONNECTED: 'disconnected';
  readonly NO_HOST: 'noHost';
  readonly AUTH_ERROR: 'authError';
  readonly BANNED: 'banned';
};
export type StatusValue = (typeof Status)[keyof typeof Status];

/** WebSocket close codes used by chatup: 4500-4999 mean "do not reconnect". */
export declare const CloseCode: {
  readonly NORMAL: 1000;
  readonly GOING_AWAY: 1001;
  readonly SLOW_CONSUMER: 4000;
  readonly PING_TIMEOUT: 4001;
  readonly BAD_TOKEN: 4500;
  readonly TOKEN_EXPIRED: 4501;
  readonly BANNED: 4502;
  readonly BAD_REQUEST: 4503;
  /** A viewer's subscribe token expired: the client fetches a fresh one, reconnects and resumes. */
  readonly SUBSCRIBE_TOKEN_EXPIRED: 4002;
  /** The channel became private and this viewer was not admitted. */
  readonly PRIVATE_CHANNEL: 4504;
  /** The operator removed this user. */
  readonly USER_REMOVED: 4505;
};

/** Whether a socket closed with `code` may be reopened. */
export declare function shouldReconnect(code: number): boolean;

/** Full-jitter backoff: a random wait in [0, min(maxDelay, baseDelay * 2^(attempt-1))). */
export declare function backoffDelay(attempt: number, baseDelay: number, maxDelay: number, random?: () => number): number;

/** Why a channel name is refused, or null when it is allowed. */
export declare function channelProblem(name: unknown): string | null;

/**
 * A fresh idempotency key, a random UUID: `crypto.randomUUID()` where available, else one
 * made from `crypto.getRandomValues` (or `random` without crypto).
 */
export declare function newIdempotencyKey(crypto?: Crypto | null, random?: () => number): string;

/** The dispatcher's host paths as absolute WebSocket URLs. */
export declare function hostEndpoints(host: JoinHost, dispatcherURL: string): { id: string; sub: string; pub: string };

/** Error codes of the server (README) and of the client itself. */
export type ErrorCode =
  | 'bad_token'
  | 'token_expired'
  | 'bad_request'
  | 'bad_channel'
  | 'empty'
  | 'invalid_utf8'
  | 'events_not_allowed'
  | 'banned'
  | 'rate_limited'
  | 'too_long'
  | 'blacklisted'
  | 'rejected'
  | 'hook_unavailable'
  | 'unavailable'
  | 'no_host'
  | 'too_many_channels'
  // A viewer of a private channel refused: no subscribe token, one that does not open the
  // channel, or banned from it (with `bad_token`, `token_expired`, `banned`):
  | 'token_required'
  | 'forbidden'
  | 'bad_idempotency_key'
  // The client's own:
  | 'not_authenticated'
  // say() without an answer within sendTimeout, or a dispatcher request within requestTimeout:
  | 'timeout'
  | 'queue_full'
  | 'closed'
  // Not connected yet, retrying (README, "When it cannot connect"):
  | 'unreachable'
  | 'cors_refused'
  | 'host_unreachable'
  | 'connection_lost'
  | 'bad_response'
  | 'bad_frame'
  | 'refused'
  | (string & {});

export declare class ChatUpError extends Error {
  constructor(
    code: ErrorCode,
    message?: string,
    details?: { retryAfter?: number | null; status?: number | null; idempotencyKey?: string | null; until?: number | null },
  );
  readonly name: 'ChatUpError';
  /** The server's `error.code`, or one of the client's own codes. */
  readonly code: ErrorCode;
  /** Seconds to wait before trying again (`rate_limited`), or null. */
  readonly retryAfter: number | null;
  /** The HTTP status of a failed HTTP call, or null. */
  readonly status: number | null;
  /**
   * For a say() that timed out after it was sent (its outcome is unknown): its idempotency
   * key. `say(text, {idempotencyKey})` with it publishes the message at most once. Else null.
   */
  readonly idempotencyKey: string | null;
  /**
   * For `banned`: when the ban ends, in ms since the Unix epoch (the client sends again
   * from then on by itself); null when it is permanent or the server did not say.
   */
  readonly until: number | null;
}

/** The `_public` object of a sender's token: at least what the site puts there. */
export interface PublicUser {
  name?: string;
  [field: string]: unknown;
}

/** A chat message as every viewer receives it. */
export interface ChatMessage {
  ch: string;
  id: number;
  ep: number;
  /** Milliseconds since the Unix epoch. */
  t: number;
  /** The sender's `_public` object; absent on messages the admin API posted without one. */
  user?: PublicUser;
  msg: string;
}

/**
 * An event message: `join`/`leave` (presence, `user` set), `rmUserMsg` (`data`: the banned
 * user's `sub` when `by` is `user`, their `_public.name` when `by` is `name`: hide their
 * messages), `resync` (`data: {reason, ep}`, no id: the resume point was void), or one
 * published by the site.
 */
export interface ChatEvent {
  ch: string;
  id?: number;
  ep?: number;
  t?: number;
  user?: PublicUser;
  ev: string;
  data?: unknown;
  /** `rmUserMsg` only: what `data` is, the token's `sub` (`user`) or `_public.name` (`name`). */
  by?: 'user' | 'name';
}

export interface StatusChange {
  status: StatusValue;
  previous: StatusValue;
  /**
   * Why, when known: a close reason or an error message; after a failed attempt, the
   * error's message and when the next one is ("…; retrying in 1.2 s"). For `banned`:
   * "banned from lobby until 2026-11-22T10:00:00Z" or "banned from lobby permanently".
   */
  reason: string;
  /** After a failed attempt: ms until the next one (null: asking the dispatcher for another host). Else null. */
  retryIn: number | null;
  /** After a failed attempt: what failed. Else null. */
  error: ChatUpError | null;
}

/** An attempt failed (the dispatcher, or opening a socket) and the next one is in `delay` ms. */
export interface Retry {
  error: ChatUpError;
  delay: number;
  /** 1 for the first retry of this connection (or of this dispatcher request). */
  attempt: number;
}

/**
 * The room's counts, as the dispatcher gives them. Emitted (`counts` event) when they change:
 * from the `POST /join` answer, every `countInterval`, and `countSettle` after this client's
 * subscriber connects (each time), its publisher joins the room, or a `join`/`leave` event
 * arrives in the room (a burst of those gives one refresh), and on `refreshCounts()`.
 */
export interface Counts {
  channel: string;
  /** Viewers, over all hosts. */
  subCount: number;
  /** Joined chatters, over all hosts. */
  pubCount: number;
}

export interface UsersPage {
  channel: string;
  total: number;
  users: PublicUser[];
  skip: number;
  limit: number;
}

/**
 * What became of a say(): its id and epoch (`duplicate: true` when the server had already
 * published it under its idempotency key, and these are that message's), or withheld by a
 * moderation plugin.
 */
export type SayResult =
  | { ch: string; id: number; ep: number; duplicate?: true; withheld?: undefined }
  | { ch: string; withheld: true };

/** Options of say() and sendEvent(). */
export interface SayOptions {
  /** The channel to send to (default: the room). */
  channel?: string;
  /**
   * The idempotency key (1-64 of `A-Z a-z 0-9 _ . : -`); default: a fresh random UUID. The
   * server publishes one key once (per user and channel, within its window), so sending
   * again with the key of a say() that timed out cannot post it twice.
   */
  idempotencyKey?: string;
}

/** A host as `POST /join` names it. */
export interface JoinHost {
  id: string;
  url?: string;
  sub: string;
  pub: string;
  post?: string;
}

export type TokenSource = string | (() => string | Promise<string>);

/** Gives a subscribe token (a JWT from the site's backend, claims `sub`, `exp`, `channels`). */
export type SubscribeTokenSource = () => string | Promise<string>;

export interface ChatUpOptions {
  /** Where the dispatcher answers (`POST /join/<room>`, `GET /channels/<room>`), e.g. "https://chat.example.com". */
  dispatcherURL: string;
  /** The channel to watch and write to. */
  room: string;
  /** The publisher token, or a function giving one (asked on every connection). Without it the client only watches. */
  jwt?: TokenSource | null;
  /** More channels to watch on the same socket (read only). */
  additionalChannels?: string[];
  /**
   * Gives the subscribe token that opens private channels (`user.<sub>`, `members-*`, … as
   * the operator configured): a JWT signed by the site's backend, with `sub`, `exp` and
   * `channels`. It goes in the viewer URL's query (`token=`) on every transport, because
   * browsers cannot set headers on a WebSocket or an EventSource. The client keeps the token
   * and calls the function again before a connection when it ends within 30 s (every time
   * when its `exp` cannot be read), when the server closes the viewer with 4002 (expired) or
   * refuses the token (once; refused again: `bad_token`). A function that throws or gives
   * no string stops the client with `bad_token`; a channel the token does not open stops it
   * with `forbidden` (`banned` when banned), the server's reason in the message. Default:
   * none, public channels only.
   */
  getSubscribeToken?: SubscribeTokenSource | null;
  /** First reconnect wait ceiling, ms (default 500); doubles per failure. */
  reconnectDelay?: number;
  /** Largest reconnect wait ceiling, ms (default 30000). */
  maxReconnectDelay?: number;
  /** Failed connection attempts to one host before asking the dispatcher for another (default 3). */
  hostFailures?: number;
  /** A connection open this long (ms) counts as healthy: the next drop starts the backoff over (default 5000). */
  stableAfter?: number;
  /** Opening a socket may take this long, ms (default 10000). */
  connectTimeout?: number;
  /** A dispatcher request must be answered within this, ms (default 10000); else `timeout`, and it is retried. */
  requestTimeout?: number;
  /** The server must answer the token within this, ms (default 10000). */
  authTimeout?: number;
  /** say() rejects with `timeout` after this, ms (default 15000); until then a say() whose outcome is unknown is sent again with its idempotency key. */
  sendTimeout?: number;
  /** say()s that may wait for a connection (default 100). */
  maxQueued?: number;
  /** Counts refresh period, ms (default 10000, ±20 %); 0 turns it off. */
  countInterval?: number;
  /**
   * After a change in the room (this client's subscriber connected, its publisher joined the
   * room, a `join` or `leave` event), the counts are asked again once, this long after the
   * last change, ms, plus a random spread of up to a third more (default 3000, so 3-4 s):
   * the hosts report their counts about every second and the dispatcher caches them as long,
   * so asking at once gets the old numbers. 0 or less turns it off.
   */
  countSettle?: number;
  /** Join the room on the publisher socket, so the user counts as a chatter and others see join/leave (default true). */
  presence?: boolean;
  /**
   * The viewer transports to use, best first (default `['websocket', 'sse', 'poll']`); one
   * name pins it. Those the page lacks (no `WebSocket`, no `EventSource`) are skipped.
   */
  transports?: Transport[];
  /**
   * Failed attempts in a row (not opened, or broken with 1006 before a first message and
   * before `stableAfter`) after which a transport gives way to the next one (default 3).
   */
  transportFailures?: number;
  /** After falling back, how long until the best transport is tried again, ms (default 300000). */
  transportRetryAfter?: number;
  /** How long a long poll may go unanswered before it is given up, ms (default 60000): keep it above nginx's `chatup_poll_timeout`. */
  pollTimeout?: number;
  /** Where the transport that worked is remembered for the session (default `sessionStorage`; null: not kept). */
  storage?: Pick<Storage, 'getItem' | 'setItem'> | null;
  /** Replacements for the globals, for other runtimes and tests (null: as if absent). */
  WebSocket?: typeof WebSocket | null;
  EventSource?: typeof EventSource | null;
  /** Where `online` events come from (default `window`): one cuts a reconnect wait short. */
  network?: EventTarget | null;
  fetch?: typeof fetch;
  random?: () => number;
  /**
   * The page's origin (default `location.origin`): when a dispatcher on another origin cannot
   * be read, the client checks whether it answers at all and, if so, names this origin in the
   * `cors_refused` error. Null: never suspect CORS.
   */
  origin?: string | null;
}

/** How the room's messages reach the page. */
export type Transport = 'websocket' | 'sse' | 'poll';

/** The viewer transports, best first. */
export declare const TRANSPORTS: readonly Transport[];

/** The client moved to another transport after the one before kept failing. */
export interface TransportChange {
  transport: Transport;
  previous: Transport;
}

export interface ChatUpEvents {
  transport: TransportChange;
  message: ChatMessage;
  event: ChatEvent;
  status: StatusChange;
  counts: Counts;
  error: ChatUpError;
  retry: Retry;
}

/** Where each channel's reader is; decides what is new and builds `since`. */
export declare class ResumePoints {
  since(channels: string[]): string;
  accept(frame: { ch: string; id?: number; ep?: number; ev?: string; data?: unknown }): 'deliver' | 'duplicate' | 'resync';
  historyFits(channel: string, history: Array<{ id: number; ep: number }>): boolean;
}

export declare class ChatUp {
  constructor(options: ChatUpOptions);
  readonly room: string;
  /** The room, then the additional channels. */
  readonly channels: string[];
  readonly dispatcherURL: string;
  readonly status: StatusValue;
  /** The authenticated user's `_public` object, or null. */
  readonly user: PublicUser | null;
  /** The last counts, or null before the first. */
  readonly counts: Counts | null;
  /** The viewer transport in use (or tried next). */
  readonly transport: Transport;

  /**
   * Joins the room; resolves once messages flow (and a given token was accepted). Rejects
   * when retrying cannot help (`bad_channel`, `bad_token`, …), and when an attempt fails
   * (`unreachable`, `cors_refused`, `timeout`, `unavailable`, `host_unreachable`, …): the
   * client then goes on retrying (see `status`, `retry`) until it connects or `close()`;
   * init() called again waits for the outcome of the next attempt. Waits while `noHost`.
   */
  init(): Promise<ChatUp>;
  /**
   * Sets the token and authenticates; resolves with the user's `_public`. Rejects when the
   * token is refused, and when the publisher's connection attempt fails (`host_unreachable`;
   * the client goes on trying).
   */
  authenticate(jwt: TokenSource): Promise<PublicUser>;
  /**
   * Sends a message with an idempotency key, again with the same key while its outcome is
   * unknown (connection lost, `unavailable`) until `sendTimeout`; rejects with a
   * ChatUpError carrying the server's code or `timeout` (with `idempotencyKey`).
   */
  say(text: string, options?: SayOptions): Promise<SayResult>;
  /** Sends an event (the token must allow events), retried the same way. */
  sendEvent(ev: string, data?: unknown, options?: SayOptions): Promise<SayResult>;
  /** The joined users of the room, paged. */
  getUsers(options?: { limit?: number; skip?: number }): Promise<UsersPage>;
  /** Fetches the counts now (the client also does, see `countInterval` and `countSettle`). */
  refreshCounts(): Promise<Counts>;
  /** Closes for good. */
  close(): void;

  on<K extends keyof ChatUpEvents>(name: K, handler: (value: ChatUpEvents[K]) => void): () => void;
  off<K extends keyof ChatUpEvents>(name: K, handler: (value: ChatUpEvents[K]) => void): void;

  static readonly Status: typeof Status;
  static readonly CloseCode: typeof CloseCode;
  static readonly ChatUpError: typeof ChatUpError;
  static readonly ResumePoints: typeof ResumePoints;
  static readonly backoffDelay: typeof backoffDelay;
  static readonly shouldReconnect: typeof shouldReconnect;
  static readonly channelProblem: typeof channelProblem;
  static readonly hostEndpoints: typeof hostEndpoints;
  static readonly newIdempotencyKey: typeof newIdempotencyKey;
}

export default ChatUp;

declare global {
  interface Window {
    /** Set by the plain-script build, dist/chatup.js. */
    ChatUp: typeof ChatUp;
  }
}
