import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import vm from 'node:vm';

import { OUTPUT, SOURCE, plainScript } from '../build.mjs';

const here = dirname(fileURLToPath(import.meta.url));

test('dist/chatup.js is the current build of src/chatup.js', () => {
  assert.equal(readFileSync(OUTPUT, 'utf8'), plainScript(readFileSync(SOURCE, 'utf8')), 'run `node client/build.mjs`');
});

test('the plain script sets window.ChatUp and nothing else', () => {
  const window = {};
  const context = vm.createContext({ window, URL, setTimeout, clearTimeout });
  vm.runInContext(readFileSync(OUTPUT, 'utf8'), context);
  assert.deepEqual(Object.keys(window), ['ChatUp']);
  const { ChatUp } = window;
  assert.equal(ChatUp.Status.BANNED, 'banned');
  assert.equal(ChatUp.CloseCode.BANNED, 4502);
  assert.equal(ChatUp.shouldReconnect(4502), false);
  const error = new ChatUp.ChatUpError('banned', 'banned from lobby');
  assert.equal(error.code, 'banned');
  assert.throws(() => new ChatUp({ dispatcherURL: 'http://x', room: 'bad room', WebSocket: class {}, fetch() {} }), /has " "/);
  for (const leaked of ['Status', 'ChatUpError', 'backoffDelay']) assert.equal(context[leaked], undefined, leaked);
});

test('the build refuses an export it cannot turn into a script', () => {
  assert.throws(() => plainScript('export { a };\n'), /cannot turn into a script/);
});

test('the TypeScript declarations accept the documented use and refuse misuse', () => {
  const require = createRequire(import.meta.url);
  let tsc;
  try {
    tsc = join(dirname(require.resolve('typescript/package.json')), 'bin', 'tsc');
  } catch {
    assert.fail('typescript is not installed: run `npm ci` in client/ (scripts/test does)');
  }
  assert.ok(existsSync(tsc));
  const args = ['--noEmit', '--strict', '--target', 'es2022', '--module', 'es2022', '--moduleResolution', 'bundler', '--lib', 'es2022,dom', '--allowJs', 'false', join(here, 'types', 'usage.ts')];
  try {
    execFileSync(process.execPath, [tsc, ...args], { encoding: 'utf8' });
  } catch (e) {
    assert.fail(`tsc found errors:\n${e.stdout}${e.stderr}`);
  }
});
