// Each function as its own real process: bad config exits non-zero listing every problem, TLS
// verification cannot be disabled, the startup line is redacted, /readyz tells the truth, SIGTERM stops.
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FUNCTION_NAMES } from '../shared/config.js';
import { freePort } from './support/pg.js';
import { ADMIN, eventually, makeTestEnv, type TestEnv, WEBHOOK_SECRET } from './support/runtime.js';

let env: TestEnv;
beforeAll(async () => {
  env = await makeTestEnv();
});
afterAll(async () => env.cleanup());

const mainOf = (fn: string) => path.join('functions', fn, 'main.ts');

describe('function processes', () => {
  it('a bad config lists every bad variable with the fix and exits 78 before anything starts', async () => {
    const result = await execa(process.execPath, ['--import', 'tsx', mainOf('dump')], {
      env: { ...env.env, FLUX_DUMP_PORT: 'eighty', FLUX_VERIFY_CPUS: '-1', FLUX_EVENT_SINKS: '{oops' },
      reject: false,
      timeout: 60_000,
    });
    expect(result.exitCode).toBe(78);
    expect(result.stderr).toMatch(/invalid configuration \(3 problems\)/);
    expect(result.stderr).toMatch(/FLUX_DUMP_PORT/);
    expect(result.stderr).toMatch(/FLUX_VERIFY_CPUS/);
    expect(result.stderr).toMatch(/FLUX_EVENT_SINKS: must be a JSON array/);
  });

  it('refuses to start with NODE_TLS_REJECT_UNAUTHORIZED=0', async () => {
    const result = await execa(process.execPath, ['--import', 'tsx', mainOf('probe')], {
      env: { ...env.env, NODE_TLS_REJECT_UNAUTHORIZED: '0' },
      reject: false,
      timeout: 60_000,
    });
    expect(result.exitCode).toBe(78);
    expect(result.stderr).toMatch(/NODE_TLS_REJECT_UNAUTHORIZED: is 0[\s\S]*NODE_EXTRA_CA_CERTS/);
  });

  it.each(FUNCTION_NAMES)(
    '%s runs alone: redacted startup line, truthful /readyz, clean SIGTERM',
    async (fn) => {
      const port = await freePort();
      const dirs = path.join(env.root, `proc-${fn}`);
      await mkdir(dirs, { recursive: true });
      const child = execa(process.execPath, ['--import', 'tsx', mainOf(fn)], {
        env: {
          ...env.env,
          FLUX_HOST: '127.0.0.1',
          [`FLUX_${fn.toUpperCase()}_PORT`]: String(port),
          FLUX_STATE_DIR: path.join(dirs, 'state'),
          FLUX_VERIFY_DRIVER: 'local',
          FLUX_PROBE_INTERVAL_MS: '0',
        },
        reject: false,
        // No SIGKILL of our own after SIGTERM (execa's default is 5 s, the watchdog's time with a grace of
        // 0): a stop that takes too long must show as the watchdog's exit code, not as a kill by the test.
        forceKillAfterDelay: false,
      });
      try {
        const ready = await eventually(
          async () => {
            const r = await fetch(`http://127.0.0.1:${port}/readyz`);
            return r;
          },
          60_000,
          200,
        );
        const body = (await ready.json()) as {
          ok: boolean;
          checks: Array<{ name: string; ok: boolean; detail: string }>;
        };
        expect(body.checks.length).toBeGreaterThan(0);
        // Truthful: the status matches the checks, and every failing check says why.
        expect(ready.status).toBe(body.ok ? 200 : 503);
        for (const check of body.checks.filter((c) => !c.ok)) expect(check.detail.length).toBeGreaterThan(10);
        expect((await fetch(`http://127.0.0.1:${port}/healthz`)).status).toBe(200);
        // prom-client's default metrics under the names prom-client gives them (stock Node dashboards).
        const metrics = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
        expect(metrics).toMatch(/^process_cpu_user_seconds_total \d/m);
        expect(metrics).toMatch(/^nodejs_eventloop_lag_seconds \d/m);
      } finally {
        child.kill('SIGTERM');
      }
      const result = await child;
      expect({ exitCode: result.exitCode, signal: result.signal }).toEqual({
        exitCode: 0,
        signal: undefined,
      });
      const startup = result.stdout.split('\n').find((l) => l.includes('"msg":"starting"'));
      expect(startup).toBeDefined();
      const line = JSON.parse(startup!) as { config: Record<string, unknown> };
      expect(line.config.FLUX_API_TOKENS).toEqual(['test-admin:[redacted]:admin']);
      expect(result.stdout).not.toContain(ADMIN.entry.split(':')[1]);
      expect(result.stdout).not.toContain(WEBHOOK_SECRET);
      expect(result.stdout).toContain('"msg":"stopped"');
    },
  );
});
