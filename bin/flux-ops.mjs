#!/usr/bin/env node
// The flux-ops CLI launcher: the built CLI (dist/) when there is one, else the TypeScript sources through
// tsx, so it works in a checkout without a build.
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const built = new URL('../dist/cli/main.js', import.meta.url);
if (existsSync(fileURLToPath(built))) {
  await import(built.href);
} else {
  const { register } = await import('tsx/esm/api');
  register();
  await import(new URL('../cli/main.ts', import.meta.url).href);
}
