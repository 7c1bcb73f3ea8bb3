// Makes dist/chatup.js, the plain-script build of src/chatup.js: the same code in a function
// that sets `window.ChatUp` (with Status, CloseCode, ChatUpError, … as its properties).
//
//   node build.mjs           write dist/chatup.js
//   node build.mjs --check   exit 1 when dist/chatup.js is not what src/chatup.js makes
import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
export const SOURCE = join(here, 'src', 'chatup.js');
export const OUTPUT = join(here, 'dist', 'chatup.js');

/** The plain script for the module text `source`. */
export function plainScript(source) {
  // The module exports with `export const|function|class` and one `export default ChatUp;`.
  let body = source.replace(/^export default ChatUp;\n/m, '');
  body = body.replace(/^export (const|function|class) /gm, '$1 ');
  const left = body.match(/^.*\bexport\b.*$/m);
  if (left && /^\s*export\b/.test(left[0])) {
    throw new Error(`src/chatup.js has an export this build cannot turn into a script: ${left[0]}`);
  }
  const indented = body
    .split('\n')
    .map((line) => (line ? `  ${line}` : line))
    .join('\n');
  return `// chatup browser client, plain-script build: sets window.ChatUp.
// Made from src/chatup.js by build.mjs; edit that file, then run \`node build.mjs\`.
(function (global) {
  'use strict';

${indented.trimEnd()}

  global.ChatUp = ChatUp;
})(typeof window !== 'undefined' ? window : globalThis);
`;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const made = plainScript(readFileSync(SOURCE, 'utf8'));
  if (process.argv.includes('--check')) {
    let current = '';
    try {
      current = readFileSync(OUTPUT, 'utf8');
    } catch {
      // Missing counts as stale.
    }
    if (current !== made) {
      console.error('dist/chatup.js is stale: run `node client/build.mjs`');
      process.exit(1);
    }
  } else {
    writeFileSync(OUTPUT, made);
    console.log(`wrote ${OUTPUT}`);
  }
}
