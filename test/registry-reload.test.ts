// Reloading FLUX_PROJECTS_FILE: a new file is validated first and a bad one is refused with the old
// registry kept and the reason logged; the file is watched (replaced by rename, as editors and config
// managers do) and re-read on SIGHUP by the real process; an empty, missing or refused registry is a
// readiness warning, never a reason to be unready.
import { randomUUID } from 'node:crypto';
import { rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { execa, type ResultPromise } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FACTORIES } from '../functions/all/app.js';
import { silentLogger } from '../shared/log.js';
import { createFileRegistry, type Project } from '../shared/registry.js';
import { freePort } from './support/pg.js';
import { eventually, makeTestEnv, type TestEnv, testRuntime } from './support/runtime.js';

const ROOT = path.resolve(import.meta.dirname, '..');

let env: TestEnv;
beforeAll(async () => {
  env = await makeTestEnv({
    FLUX_TENANT_PROBE_GATEWAY_URL: 'http://127.0.0.1:9',
    FLUX_PROBE_INTERVAL_MS: '0',
  });
});
afterAll(async () => {
  await env?.cleanup();
});

function project(slug: string): Project {
  const id = randomUUID();
  return {
    id,
    hash: id.replaceAll('-', '').slice(0, 7),
    slug,
    engine: 'v1_dedicated',
    // Each v1 project has its own database (the registry refuses two claiming one).
    databaseUrl: `env:UNUSED_URL_${id.slice(0, 8)}`,
    apiHost: `api--${slug}--${id.slice(0, 7)}.flux.test`,
  };
}

/** Replaces the file by rename, as an editor or a config manager does. */
async function replaceFile(file: string, content: string): Promise<void> {
  const tmp = `${file}.${randomUUID()}`;
  await writeFile(tmp, content);
  await rename(tmp, file);
}

const registryFile = (projects: Project[]) => JSON.stringify({ clusters: [], projects });

interface RegistryCheck {
  name: string;
  ok: boolean;
  optional?: boolean;
  warning?: string;
  detail: string;
  tenants?: number;
  refused?: { reason: string; error: string };
}
async function registryCheckOf(res: Response): Promise<{ status: number; check: RegistryCheck }> {
  const body = (await res.json()) as { checks: RegistryCheck[] };
  return { status: res.status, check: body.checks.find((c) => c.name === 'registry')! };
}

describe('createFileRegistry', () => {
  it('reloads a valid file, refuses a bad one keeping the registry in use, and says why', async () => {
    const file = path.join(env.root, 'reload.json');
    await writeFile(file, registryFile([project('first')]));
    const rt = testRuntime('dump', env);
    const registry = createFileRegistry(file, { log: rt.log });
    expect(registry.list().map((p) => p.slug)).toEqual(['first']);

    await replaceFile(file, registryFile([project('first'), project('second')]));
    expect(registry.reload('test')).toEqual({ ok: true, projects: 2 });
    expect(registry.bySlug('second')).toBeDefined();

    const bad: Array<[string, RegExp]> = [
      ['{"projects": [', /is not valid JSON/],
      [JSON.stringify({ projects: [{ slug: 'no-id' }] }), /is invalid: projects\.0\.id/],
      [registryFile([project('twin'), { ...project('twin') }]), /two projects share slug "twin"/],
    ];
    for (const [content, why] of bad) {
      await replaceFile(file, content);
      const outcome = registry.reload('test');
      expect(outcome).toEqual({ ok: false, error: expect.stringMatching(why) });
      expect(registry.list().map((p) => p.slug)).toEqual(['first', 'second']);
      expect(registry.status().refused).toMatchObject({ reason: 'test', error: expect.stringMatching(why) });
      const logged = rt.logs.lines.filter((l) => String(l.msg).startsWith('registry reload refused')).at(-1);
      expect(logged).toMatchObject({ level: 'error', error: expect.stringMatching(why), projects: 2 });
    }
    await rm(file);
    expect(registry.reload('test')).toEqual({ ok: false, error: expect.stringMatching(/does not exist/) });
    expect(registry.list()).toHaveLength(2);
  });

  it('watches the file: a replaced file is loaded, a bad replacement is refused', async () => {
    const file = path.join(env.root, 'watched.json');
    await writeFile(file, registryFile([project('watched')]));
    const rt = testRuntime('dump', env);
    const registry = createFileRegistry(file, { log: rt.log });
    const stop = registry.watch(50);
    try {
      await replaceFile(file, registryFile([project('watched'), project('added')]));
      await eventually(() => registry.bySlug('added'));
      await replaceFile(file, '{ not json');
      await eventually(() => registry.status().refused);
      expect(registry.list()).toHaveLength(2);
      expect(rt.logs.lines.some((l) => l.msg === 'registry reloaded' && l.reason === 'file changed')).toBe(
        true,
      );
    } finally {
      stop();
    }
  });
});

describe('readiness of the registry', () => {
  it('a missing, empty or refused registry is a warning in /readyz, which stays 200', async () => {
    const file = path.join(env.root, 'readiness.json');
    const rt = testRuntime('probe', env, {
      registry: createFileRegistry(file, { log: silentLogger() }),
    });
    const fn = FACTORIES.probe(rt);
    const registry = rt.registry as ReturnType<typeof createFileRegistry>;

    let ready = await registryCheckOf(await fn.app.request('/readyz'));
    expect(ready.status).toBe(200);
    expect(ready.check).toMatchObject({ ok: false, optional: true, warning: 'registry_missing' });
    expect(ready.check.detail).toMatch(/does not exist: there is nothing to back up or probe/);

    await writeFile(file, registryFile([]));
    registry.reload('test');
    ready = await registryCheckOf(await fn.app.request('/readyz'));
    expect(ready).toMatchObject({ status: 200, check: { ok: false, warning: 'registry_empty' } });

    await replaceFile(file, registryFile([project('ready')]));
    registry.reload('test');
    ready = await registryCheckOf(await fn.app.request('/readyz'));
    expect(ready).toMatchObject({ status: 200, check: { ok: true, tenants: 1 } });

    await replaceFile(file, '[]');
    registry.reload('test');
    ready = await registryCheckOf(await fn.app.request('/readyz'));
    expect(ready).toMatchObject({ status: 200, check: { ok: false, warning: 'reload_refused', tenants: 1 } });
    expect(ready.check.detail).toMatch(/was refused: FLUX_PROJECTS_FILE .* is invalid/);
  });
});

describe('the real probe process', () => {
  let child: ResultPromise | undefined;
  afterAll(async () => {
    if (child && child.exitCode === null) child.kill('SIGKILL');
    await child;
  });

  it('re-reads FLUX_PROJECTS_FILE on SIGHUP, refuses a bad file and keeps running with the old one', async () => {
    const file = path.join(env.root, 'sighup.json');
    await writeFile(file, registryFile([project('one')]));
    const port = await freePort();
    let out = '';
    // Node itself with tsx as a loader (not the tsx CLI, which runs a second process): the signal lands
    // on the process under test.
    child = execa(process.execPath, ['--import', 'tsx', 'functions/probe/main.ts'], {
      cwd: ROOT,
      env: {
        ...env.env,
        FLUX_HOST: '127.0.0.1',
        FLUX_PROBE_PORT: String(port),
        FLUX_PROJECTS_FILE: file,
        // Only SIGHUP reloads here: the file is not polled.
        FLUX_PROJECTS_FILE_POLL_MS: '0',
        FLUX_LOG_LEVEL: 'info',
      },
      extendEnv: false,
      reject: false,
      stdin: 'ignore',
    });
    child.stdout?.on('data', (d: Buffer) => {
      out += d.toString();
    });
    const base = `http://127.0.0.1:${port}`;
    const tenants = async () => (await registryCheckOf(await fetch(`${base}/readyz`))).check;
    await eventually(async () => (await fetch(`${base}/healthz`)).ok, 60_000, 100);
    expect(await tenants()).toMatchObject({ ok: true, tenants: 1 });

    await replaceFile(file, registryFile([project('one'), project('two')]));
    // Not polled: nothing changes until the signal.
    expect(await tenants()).toMatchObject({ tenants: 1 });
    child.kill('SIGHUP');
    await eventually(async () => (await tenants()).tenants === 2);

    await replaceFile(file, '{"projects": [');
    child.kill('SIGHUP');
    await eventually(async () => (await tenants()).warning === 'reload_refused');
    expect(await tenants()).toMatchObject({ tenants: 2, refused: { reason: 'SIGHUP' } });
    expect(out).toMatch(/"msg":"registry reload refused: the registry in use stays until the file is fixed"/);
    expect(out).toMatch(/"error":"FLUX_PROJECTS_FILE \S+ is not valid JSON"/);
    expect(child.exitCode).toBeNull();
    child.kill('SIGTERM');
    expect((await child).exitCode).toBe(0);
  });
});
