// The README's contract: two commands at the top, and tables that equal what the code defines.
import { readFile } from 'node:fs/promises';
import { describe, expect, it } from 'vitest';
import { configTable, EVENT_DOCS, renderTables } from '../scripts/readme-tables.js';
import { VARS } from '../shared/config.js';
import { EVENT_TYPES } from '../shared/events/envelope.js';

describe('README', () => {
  it('its configuration, events and errors tables are generated from the code (run `npm run docs`)', async () => {
    const readme = await readFile('README.md', 'utf8');
    expect(readme).toContain('<!-- table:config -->');
    expect(renderTables(readme)).toBe(readme);
  });

  it('every default in the configuration table can be pasted back as the variable and means the default', () => {
    const rows = configTable().split('\n').slice(2);
    let shown = 0;
    for (const row of rows) {
      const [, name, cellText] = /^\| `(\w+)` \| ([^|]*) \|/.exec(row) ?? [];
      const schema = VARS[name as keyof typeof VARS].schema;
      const value = /^`([^`]*)`/.exec(cellText ?? '')?.[1];
      const byDefault = schema.safeParse(undefined);
      if (value === undefined) continue;
      shown += 1;
      const pasted = schema.safeParse(value);
      expect({ name, success: pasted.success }).toEqual({ name, success: true });
      expect({ name, value: pasted.data }).toEqual({ name, value: byDefault.data });
    }
    expect(shown).toBeGreaterThan(40);
    expect(configTable()).toContain('| `FLUX_PROBE_EXPECTED_STATUS` | `200-399` |');
  });

  it('documents every event type', () => {
    expect(Object.keys(EVENT_DOCS).sort()).toEqual([...EVENT_TYPES].sort());
  });

  it('starts with the two commands: run the main job, run the tests', async () => {
    const readme = await readFile('README.md', 'utf8');
    const blocks = [...readme.matchAll(/```sh\n([^`]+)```/g)].map((m) => m[1]!.trim());
    expect(blocks[0]).toBe('npm ci && npm run demo');
    expect(blocks[1]).toBe('npm ci && npm test');
    const ci = await readFile('.ci/run', 'utf8');
    expect(ci).toContain('npm ci');
    expect(ci).toContain('npm test');
  });
});
