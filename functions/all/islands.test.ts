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
      const files = await readdir(path.join(FUNCTIONS, folder.name), { recursive: true });
      for (const file of files) {
        if (!/\.[jt]s$/.test(file)) continue;
        const full = path.join(FUNCTIONS, folder.name, file);
        const text = await readFile(full, 'utf8');
        // Every relative import resolved: one that lands in another function folder is a crossing.
        for (const m of text.matchAll(/from '(\.[^']*)'/g)) {
          const target = path.relative(FUNCTIONS, path.resolve(path.dirname(full), m[1]!));
          const [top] = target.split(path.sep);
          if (!target.startsWith('..') && top !== folder.name)
            crossings.push(`functions/${folder.name}/${file} → functions/${top}`);
        }
      }
    }
    expect(crossings).toEqual([]);
  });
});
