// Functions are islands: no function folder imports another's (they ask over HTTP or with events, as
// separate processes must); only the all-in-one and the router, which mount or front them, do.
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';

const FUNCTIONS = path.resolve(import.meta.dirname, '..');
const MOUNTERS = new Set(['all', 'router']);

describe('the function folders', () => {
  it('import no other function folder (only all and router mount them)', async () => {
    const crossings: string[] = [];
    const folders = (await readdir(FUNCTIONS, { withFileTypes: true })).filter((d) => d.isDirectory());
    expect(folders.map((d) => d.name)).toEqual(
      expect.arrayContaining(['dump', 'migrate', 'restore', 'verify']),
    );
    for (const folder of folders) {
      if (MOUNTERS.has(folder.name)) continue;
      for (const file of await readdir(path.join(FUNCTIONS, folder.name))) {
        if (!file.endsWith('.ts')) continue;
        const text = await readFile(path.join(FUNCTIONS, folder.name, file), 'utf8');
        for (const m of text.matchAll(/from '\.\.\/([a-z]+)\//g)) {
          if (m[1] !== folder.name) crossings.push(`functions/${folder.name}/${file} → functions/${m[1]}`);
        }
      }
    }
    expect(crossings).toEqual([]);
  });
});
