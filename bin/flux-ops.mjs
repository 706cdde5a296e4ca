#!/usr/bin/env node
// The flux-ops CLI launcher: the built CLI (dist/) when there is one, else the TypeScript sources through
// tsx, so it works in a checkout without a build. A production install (npm ci --omit=dev) has no tsx:
// it needs dist/ (npm run build, or a packed flux-ops), and says so instead of a module-not-found trace.
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const built = new URL('../dist/cli/main.js', import.meta.url);
if (existsSync(fileURLToPath(built))) {
  await import(built.href);
} else {
  let register;
  try {
    ({ register } = await import('tsx/esm/api'));
  } catch {
    process.stderr.write(
      'flux-ops: this install has neither the built CLI (dist/cli/main.js) nor tsx to run the sources: ' +
        'run npm run build where the dev dependencies are installed, or install a packed flux-ops (npm pack)\n',
    );
    process.exit(70);
  }
  register();
  await import(new URL('../cli/main.ts', import.meta.url).href);
}
