// Compiled (not run) by test/build.test.mjs with `tsc --strict`: the declarations must accept
// what the README shows and refuse misuse (the @ts-expect-error lines).
import ChatUpDefault, { ChatUp, ChatUpError, Status, type ChatMessage, type StatusValue } from '../../src/chatup.js';

async function example(): Promise<void> {
  const chat = new ChatUp({
    dispatcherURL: 'https://chat.example.com',
    room: 'lobby',
    jwt: async () => 'token',
    additionalChannels: ['news'],
    reconnectDelay: 250,
    countSettle: 2000,
    transports: ['sse', 'poll'],
  });
  chat.on('transport', ({ transport, previous }) => console.log(transport, previous, chat.transport === 'poll'));
  const watcher = new ChatUp({
    dispatcherURL: 'https://chat.example.com',
    room: 'user.alice',
    additionalChannels: ['members-club'],
    getSubscribeToken: () => fetch('/my/subscribe-token').then((r) => r.text()),
  });
  watcher.init().catch((e: unknown) => {
    if (e instanceof ChatUpError && (e.code === 'forbidden' || e.code === 'token_required')) console.log(e.message);
  });
  console.log(ChatUp.CloseCode.SUBSCRIBE_TOKEN_EXPIRED === 4002);
  // @ts-expect-error: a function giving the token, not the token
  new ChatUp({ dispatcherURL: 'https://chat.example.com', room: 'lobby', getSubscribeToken: 'token' });
  // @ts-expect-error: not a transport
  new ChatUp({ dispatcherURL: 'https://chat.example.com', room: 'lobby', transports: ['comet'] });
  const stop: () => void = chat.on('message', (m: ChatMessage) => console.log(m.user?.name, m.msg, m.id));
  // @ts-expect-error: user is absent on admin posts without one
  chat.on('message', (m: ChatMessage) => console.log(m.user.name));
  chat.on('event', (e) => console.log(e.ev, e.data, e.by === 'name'));
  chat.on('status', ({ status, reason }) => {
    const s: StatusValue = status;
    if (s === Status.BANNED) console.log(reason);
  });
  chat.on('counts', ({ subCount, pubCount }) => console.log(subCount + pubCount));
  chat.on('retry', ({ error, delay, attempt }) => console.log(error.code, delay + attempt));
  chat.on('status', ({ retryIn, error }) => console.log(retryIn ?? 0, error?.code === 'cors_refused'));
  stop();
  await chat.init();
  try {
    const ack = await chat.say('hello');
    if (!ack.withheld) console.log(ack.id + 1, ack.duplicate === true);
  } catch (e) {
    if (e instanceof ChatUpError && e.code === 'rate_limited') console.log(e.retryAfter);
    if (e instanceof ChatUpError && e.code === 'banned' && e.until !== null) console.log(new Date(e.until));
    if (e instanceof ChatUpError && e.code === 'timeout' && e.idempotencyKey !== null) {
      await chat.say('hello', { idempotencyKey: e.idempotencyKey });
    }
  }
  const key: string = ChatUp.newIdempotencyKey();
  await chat.sendEvent('typing', { on: true }, { channel: 'news', idempotencyKey: key });
  const page = await chat.getUsers({ limit: 10, skip: 0 });
  console.log(page.total, page.users[0]?.name);
  const user = await chat.authenticate('other-token');
  console.log(user.name);
  chat.close();
  const fromGlobal: typeof ChatUp = window.ChatUp;
  console.log(fromGlobal.Status.NO_HOST, ChatUpDefault === ChatUp);

  // @ts-expect-error: the room is required
  new ChatUp({ dispatcherURL: 'https://chat.example.com' });
  // @ts-expect-error: no such event
  chat.on('messages', () => {});
  // @ts-expect-error: say takes text
  await chat.say({ msg: 'x' });
  // @ts-expect-error: a key is a string
  await chat.say('x', { idempotencyKey: 42 });
  // @ts-expect-error: not a status
  const wrong: StatusValue = 'online';
  console.log(wrong);
}

console.log(example);
