// Refreshes web/openapi.json from the real API (`npm run openapi`): starts the stack, fetches
// /openapi.json and writes it pretty-printed. The browser test fails when the committed file
// differs from what the API serves; `npm run build` generates src/api/schema.d.ts from it offline.
import fs from 'node:fs';
import path from 'node:path';
import { root, startStack } from '../test/stack.mjs';

const stack = await startStack();
try {
  const doc = await (await fetch(`${stack.api}/openapi.json`)).json();
  const out = path.join(root, 'web/openapi.json');
  fs.writeFileSync(out, JSON.stringify(doc, null, 2) + '\n');
  console.log(`wrote ${out}`);
} finally {
  await stack.stop();
}
process.exit(0);
