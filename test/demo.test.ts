// The README's first command runs the main job: the demo (a real source Postgres, the real all-in-one
// process, create -> replicate -> verify over HTTP and events) ends with every backup restorable.
import { execa } from 'execa';
import { describe, expect, it } from 'vitest';

describe('npm run demo', () => {
  it('ends with every demo backup restorable and replicated offsite', async () => {
    const result = await execa(process.execPath, ['--import', 'tsx', 'scripts/demo.ts'], {
      reject: false,
      timeout: 240_000,
      env: { ...process.env, FLUX_PORT: '' },
    });
    expect(result.stderr).not.toMatch(/demo: .*failed/);
    expect(result.exitCode).toBe(0);
    const rows = result.stdout.split('\n').filter((l) => /^(bloom-atelier|ledger-v1)\s/.test(l));
    expect(rows).toHaveLength(2);
    for (const row of rows) expect(row).toMatch(/\s+yes\s+yes\s+yes\s+restorable\s*$/);
    expect(result.stdout).toContain('every backup is restorable and replicated offsite');
  });
});
