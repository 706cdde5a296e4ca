// The image's healthcheck against a real process: liveness by default, so a probe function that is alive
// but not ready (tenants to probe, no gateway) stays healthy; `--ready` asks /readyz and says why not.
import { randomUUID } from 'node:crypto';
import path from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  type FnProcess,
  killStartedFunctions,
  ROOT,
  startFunction,
  writeProjectsFile,
} from './support/faults.js';
import { makeTestEnv, type TestEnv } from './support/runtime.js';

let testEnv: TestEnv;
let probe: FnProcess;

beforeAll(async () => {
  testEnv = await makeTestEnv({ FLUX_TENANT_PROBE_GATEWAY_URL: undefined, FLUX_PROBE_INTERVAL_MS: '0' });
  await writeProjectsFile(testEnv.env.FLUX_PROJECTS_FILE!, {
    projects: [
      {
        id: randomUUID(),
        hash: 'abcdef0',
        slug: 'bloom-atelier',
        engine: 'v1_dedicated',
        databaseUrl: 'postgres://unused@127.0.0.1:1/x',
        apiHost: 'api--bloom-atelier--abcdef0.flux.test',
      },
    ],
  });
  probe = await startFunction('probe', testEnv.env);
});
afterAll(async () => {
  await probe?.stop();
  await killStartedFunctions();
  await testEnv?.cleanup();
});

function healthcheck(...args: string[]) {
  return execa(
    process.execPath,
    ['--import', 'tsx', path.join('functions', 'router', 'healthcheck.ts'), ...args],
    {
      cwd: ROOT,
      env: {
        ...testEnv.env,
        FLUX_FUNCTION: 'probe',
        FLUX_HOST: '0.0.0.0',
        FLUX_PROBE_PORT: String(probe.port),
      },
      reject: false,
      stdin: 'ignore',
    },
  );
}

describe('the container healthcheck', () => {
  it('is healthy while the process lives, even when it is not ready', async () => {
    expect((await probe.fetch('/readyz')).status).toBe(503);
    const live = await healthcheck();
    expect(live.stderr).toBe('');
    expect(live.exitCode).toBe(0);
  });

  it('--ready reports readiness, with the reason', async () => {
    const ready = await healthcheck('--ready');
    expect(ready.exitCode).toBe(1);
    expect(ready.stderr).toMatch(
      /\/readyz answered 503: .*FLUX_TENANT_PROBE_GATEWAY_URL is not set and 1 tenant/,
    );
  });

  it('is unhealthy when nothing answers', async () => {
    await probe.stop();
    const dead = await healthcheck();
    expect(dead.exitCode).toBe(1);
    expect(dead.stderr).toMatch(/^healthcheck: /);
  });
});
