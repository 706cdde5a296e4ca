// The README's first command runs the main job: the demo (a real source Postgres, the real all-in-one
// process, create -> replicate -> verify over HTTP and events) ends with every backup restorable, says it
// cleaned up, and says how to look at what it made; following those words shows the demo's backups.
import path from 'node:path';
import { execa } from 'execa';
import { describe, expect, it } from 'vitest';
import { ROOT } from './support/faults.js';
import { freePort } from './support/pg.js';
import { eventually } from './support/runtime.js';

describe('npm run demo', () => {
  it('ends with every demo backup restorable and replicated offsite, then says where and how to look', async () => {
    const result = await execa(process.execPath, ['--import', 'tsx', 'scripts/demo.ts'], {
      cwd: ROOT,
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
    expect(result.stdout).toMatch(/^demo: done, and cleaned up: this flux-ops process and the throwaway/m);
    const serve = /^ {2}FLUX_PROJECTS_FILE=(\S+) npm start$/m.exec(result.stdout);
    expect(serve).not.toBeNull();
    expect(result.stdout).toMatch(/npx flux-ops backup status .*http:\/\/127\.0\.0\.1:8080\/status/);

    // Do what it says (npm start is this process on its embedded defaults): the backups are there.
    const port = await freePort();
    const env: Record<string, string> = {};
    for (const [k, v] of Object.entries(process.env))
      if (v !== undefined && !k.startsWith('FLUX_')) env[k] = v;
    const server = execa(process.execPath, ['--import', 'tsx', 'functions/all/main.ts'], {
      cwd: ROOT,
      env: { ...env, FLUX_PROJECTS_FILE: serve![1]!, FLUX_PORT: String(port), FLUX_PROBE_INTERVAL_MS: '0' },
      extendEnv: false,
      reject: false,
      buffer: false,
      forceKillAfterDelay: false,
    });
    let err = '';
    server.stderr?.on('data', (chunk: Buffer) => {
      err += chunk.toString();
    });
    server.stdout?.resume();
    try {
      const token = await eventually(async () => {
        if (server.exitCode !== null) throw new Error(`npm start exited ${server.exitCode}: ${err}`);
        return /^export FLUX_API_TOKEN=(\S+)$/m.exec(err)?.[1];
      }, 90_000);
      const status = await execa(
        process.execPath,
        [path.join(ROOT, 'bin', 'flux-ops.mjs'), 'backup', 'status'],
        {
          env: { ...env, FLUX_API_BASE: `http://127.0.0.1:${port}`, FLUX_API_TOKEN: token },
          extendEnv: false,
          reject: false,
        },
      );
      expect(status.stderr).toBe('');
      expect(status.stdout).toMatch(/^bloom-atelier\s+restorable\s/m);
      expect(status.stdout).toMatch(/^ledger-v1\s+restorable\s/m);
    } finally {
      server.kill('SIGTERM');
      await server;
    }
  });
});
