// What the browser tests share: their environment, the control channel to the Rust side that
// runs them (tests/tests/integration/browser.rs), chromium, and reading the example page.
//
// To stop or kill a process, a script writes `CONTROL <verb>` on stdout and waits for `OK`
// (or `OK <json>`) on stdin.

import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import { dirname, extname, join, normalize } from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';

import { chromium } from 'playwright-core';

/** The environment variable `name`, or exit saying how these tests are run. */
export function need(name) {
  const value = process.env[name];
  if (!value) {
    console.error(`${name} is not set: run this through \`cargo test -p chatup-tests --test integration browser\``);
    process.exit(2);
  }
  return value;
}

const input = readline.createInterface({ input: process.stdin });
const replies = [];
const waiting = [];
input.on('line', (line) => {
  const resolve = waiting.shift();
  if (resolve) resolve(line);
  else replies.push(line);
});

/** Asks the Rust side to do `verb`; resolves with the JSON it answers, if any. */
export async function control(verb) {
  process.stdout.write(`CONTROL ${verb}\n`);
  const line = replies.length ? replies.shift() : await new Promise((resolve) => waiting.push(resolve));
  assert.match(line, /^OK( |$)/, `CONTROL ${verb}`);
  const rest = line.slice(3);
  return rest ? JSON.parse(rest) : undefined;
}

const CLIENT = join(dirname(fileURLToPath(import.meta.url)), '..');
const TYPES = { '.html': 'text/html', '.js': 'text/javascript', '.css': 'text/css' };

/**
 * The page's own origin: client/{src,dist,example} over HTTP, as a site would serve them, on
 * a free port of 127.0.0.1. `other(request, response)` answers the other paths (else 404).
 */
export function serveClient(other = null) {
  const server = createServer(async (request, response) => {
    const path = normalize(decodeURIComponent(new URL(request.url, 'http://x').pathname)).replace(/\/$/, '/index.html');
    const match = /^\/client\/((src|dist|example)\/[^]*)$/.exec(path);
    if (!match && other) {
      other(request, response);
      return;
    }
    try {
      if (!match) throw new Error('not served');
      const body = await readFile(join(CLIENT, match[1]));
      response.writeHead(200, { 'content-type': TYPES[extname(path)] || 'application/octet-stream' });
      response.end(body);
    } catch {
      response.writeHead(404).end();
    }
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}

/** Chromium (Debian's, or $CHROMIUM) and the pages opened in it, screenshotted by `finish`. */
export class Browser {
  constructor(artifacts) {
    this.artifacts = artifacts;
    this.pages = new Map();
  }

  async start() {
    mkdirSync(this.artifacts, { recursive: true });
    this.browser = await chromium.launch({
      executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
      headless: true,
      // Without the background-networking flags chromium keeps trying to reach Google's hosts.
      args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
  }

  /**
   * Opens `url` as page `name`, recording every status the page shows in `window.__shown`;
   * `watch(page)`, if given, is called before the page loads (to listen to its requests).
   */
  async open(name, url, watch) {
    const context = await this.browser.newContext({ viewport: { width: 900, height: 700 } });
    const page = await context.newPage();
    page.dialogs = [];
    page.errors = [];
    page.on('dialog', (dialog) => {
      page.dialogs.push(dialog.message());
      dialog.dismiss().catch(() => {});
    });
    page.on('pageerror', (e) => page.errors.push(e.message));
    if (watch) watch(page);
    await page.addInitScript(() => {
      window.__shown = [];
      document.addEventListener('DOMContentLoaded', () => {
        const badge = document.getElementById('status');
        new MutationObserver(() => window.__shown.push(badge.dataset.status)).observe(badge, { attributes: true });
      });
    });
    await page.goto(url);
    this.pages.set(name, page);
    return page;
  }

  async newContext() {
    return this.browser.newContext();
  }

  /** Screenshots every page into the artifacts folder, then closes the browser. */
  async finish() {
    for (const [name, page] of this.pages) {
      await page.screenshot({ path: join(this.artifacts, `${name}.png`), fullPage: true }).catch(() => {});
    }
    console.log(`screenshots: ${this.artifacts}`);
    await this.browser?.close();
    input.close();
  }
}

export function waitStatus(page, status, timeout = 20000) {
  return page.waitForFunction((s) => document.getElementById('status').dataset.status === s, status, { timeout });
}

/** Waits until the page has shown `status` since its `from`-th status change. */
export function waitShown(page, status, from = 0, timeout = 20000) {
  return page.waitForFunction(([s, i]) => window.__shown.slice(i).includes(s), [status, from], { timeout });
}

export const shownCount = (page) => page.evaluate(() => window.__shown.length);

/** The chat messages listed on the page. */
export function listed(page) {
  return page.$$eval('#messages li.message', (items) =>
    items.map((li) => ({ id: Number(li.dataset.id), ep: li.dataset.ep, user: li.dataset.user, text: li.querySelector('.text').textContent })),
  );
}

export function waitText(page, text, timeout = 20000) {
  return page.waitForFunction(
    (t) => [...document.querySelectorAll('#messages li.message .text')].some((el) => el.textContent === t),
    text,
    { timeout },
  );
}

/**
 * Publishes `feed 1`, `feed 2`, … through `publish(text)` (which resolves `{id, ep}` or
 * throws), retrying each until it is accepted, until `stop()`; `acked` lists what went out,
 * each with `sentAt`, when its first attempt left (`performance.now()`).
 */
export function feed(publish, pause = 60) {
  const acked = [];
  let feeding = true;
  const done = (async () => {
    for (let n = 1; feeding; n++) {
      const sentAt = performance.now();
      for (;;) {
        try {
          acked.push({ text: `feed ${n}`, sentAt, ...(await publish(`feed ${n}`)) });
          break;
        } catch {
          // Down for now: try again.
          await new Promise((r) => setTimeout(r, 100));
        }
      }
      await new Promise((r) => setTimeout(r, pause));
    }
  })();
  return {
    acked,
    /** Resolves once `n` messages in all were accepted. */
    async until(n) {
      while (acked.length < n) await new Promise((r) => setTimeout(r, 20));
    },
    /**
     * Resolves with the accepted messages first sent after `time` (`performance.now()`),
     * once there are `n`: a message already on its way at `time` may have arrived before.
     */
    async sentAfter(time, n) {
      const after = () => acked.filter((m) => m.sentAt > time);
      while (after().length < n) await new Promise((r) => setTimeout(r, 20));
      return after();
    },
    async stop() {
      feeding = false;
      await done;
    },
  };
}

/** Every accepted message is on the page exactly once, under its id, and ids only grow. */
export async function assertAllShownOnce(page, acked) {
  await waitText(page, acked.at(-1).text);
  const shown = await listed(page);
  const ids = shown.map((m) => m.id);
  for (let i = 1; i < ids.length; i++) assert.ok(ids[i] > ids[i - 1], `ids in order, none twice: ${ids.join(',')}`);
  const texts = shown.map((m) => m.text);
  for (const m of acked) assert.equal(texts.filter((t) => t === m.text).length, 1, `"${m.text}" shown once`);
  const byId = new Map(shown.map((m) => [m.id, m.text]));
  for (const m of acked) assert.equal(byId.get(m.id), m.text, `id ${m.id}`);
}
