// The first ten minutes, as a new operator meets them, with real processes: `npm start`'s all-in-one on
// loopback without FLUX_API_TOKENS prints a dev token the CLI then uses (and writes it nowhere), a
// non-loopback bind makes none and says why a request fails; the CLI against a server that is not flux-ops
// exits 69, and a FLUX_API_BASE without a scheme is told to add http://.
import { readdir, readFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createServer as createTcpServer } from 'node:net';
import path from 'node:path';
import { execa, type ResultPromise } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EXIT } from '../shared/errors.js';
import { ROOT } from './support/faults.js';
import { freePort } from './support/pg.js';
import { eventually, makeTestEnv, type TestEnv } from './support/runtime.js';

const BIN = path.join(ROOT, 'bin', 'flux-ops.mjs');
let testEnv: TestEnv;
const children: ResultPromise[] = [];

beforeAll(async () => {
  // No FLUX_API_TOKENS at all, as after a fresh clone.
  testEnv = await makeTestEnv({ FLUX_API_TOKENS: undefined, FLUX_PROBE_INTERVAL_MS: '0' });
});
afterAll(async () => {
  for (const child of children) child.kill('SIGKILL');
  await Promise.allSettled(children);
  await testEnv?.cleanup();
});

interface Started {
  child: ResultPromise;
  url: string;
  stderr(): string;
  stdout(): string;
}

/** functions/all/main.ts (what `npm start` runs) on a free port; waits until /healthz answers. */
async function startAll(name: string, env: Record<string, string>): Promise<Started> {
  const port = await freePort();
  const base = path.join(testEnv.root, name);
  const child = execa(process.execPath, ['--import', 'tsx', 'functions/all/main.ts'], {
    cwd: ROOT,
    env: {
      ...testEnv.env,
      FLUX_STATE_DIR: path.join(base, 'state'),
      FLUX_BACKUPS_LOCAL_DIR: path.join(base, 'backups'),
      FLUX_BACKUPS_OFFSITE_DIR: path.join(base, 'offsite'),
      FLUX_PORT: String(port),
      ...env,
    },
    extendEnv: false,
    reject: false,
    stdin: 'ignore',
    forceKillAfterDelay: false,
    buffer: false,
  });
  children.push(child);
  let out = '';
  let err = '';
  child.stdout?.on('data', (chunk: Buffer) => {
    out += chunk.toString();
  });
  child.stderr?.on('data', (chunk: Buffer) => {
    err += chunk.toString();
  });
  const url = `http://127.0.0.1:${port}`;
  await eventually(async () => {
    if (child.exitCode !== null) throw new Error(`all-in-one exited ${child.exitCode}: ${err}`);
    return (await fetch(`${url}/healthz`)).ok && /"msg":"listening"/.test(out);
  }, 90_000);
  return { child, url, stderr: () => err, stdout: () => out };
}

async function cli(args: string[], env: Record<string, string>) {
  const r = await execa(process.execPath, [BIN, ...args], {
    env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '/tmp', ...env },
    extendEnv: false,
    reject: false,
    stdin: 'ignore',
    timeout: 60_000,
  });
  return { exitCode: r.exitCode ?? -1, stdout: String(r.stdout), stderr: String(r.stderr) };
}

/** Every byte of every file under `dir`, as text. */
async function allFileText(dir: string): Promise<string> {
  const parts: string[] = [];
  for (const entry of await readdir(dir, { recursive: true, withFileTypes: true }).catch(() => [])) {
    if (entry.isFile()) parts.push(await readFile(path.join(entry.parentPath, entry.name), 'latin1'));
  }
  return parts.join('\n');
}

describe('npm start without FLUX_API_TOKENS', () => {
  it('on loopback: prints a dev token and its export line once; the CLI works with it; it is written nowhere', async () => {
    const all = await startAll('loopback', { FLUX_HOST: '127.0.0.1' });
    const exports = all.stderr().match(/^export FLUX_API_TOKEN=(\S+)$/gm) ?? [];
    expect(exports).toHaveLength(1);
    const token = exports[0]!.slice('export FLUX_API_TOKEN='.length);
    expect(token).toMatch(/^fluxdev_[A-Za-z0-9_-]{43}$/);
    expect(all.stderr()).toContain(`export FLUX_API_BASE=${all.url}; npx flux-ops backup status`);
    expect(all.stderr()).toContain(`status page: ${all.url}/status`);

    // The CLI with exactly what the export line gives (an admin token) …
    const status = await cli(['backup', 'status'], { FLUX_API_BASE: all.url, FLUX_API_TOKEN: token });
    expect(status.stderr).toBe('');
    expect(status.exitCode).toBe(0);
    const events = await fetch(`${all.url}/api/ops/v1/status`, {
      headers: { authorization: `Bearer ${token}` },
    });
    expect(events.status).toBe(200);
    // … while another token is refused as unknown (the server has a token, so it does not say "none").
    const other = await cli(['backup', 'status'], { FLUX_API_BASE: all.url, FLUX_API_TOKEN: 'fluxdev_nope' });
    expect(other.exitCode).toBe(EXIT.noPermission);
    expect(other.stderr).toMatch(/the Bearer token is not valid/);

    // Not in the JSON log (the start-up line names it only by id), nor in any file it wrote.
    expect(all.stdout()).not.toContain(token);
    expect(all.stdout()).toContain('"dev:[redacted]:admin"');
    const base = path.join(testEnv.root, 'loopback');
    const written = await allFileText(base);
    expect(written.length).toBeGreaterThan(0);
    expect(written).not.toContain(token);
    all.child.kill('SIGTERM');
    expect((await all.child).exitCode).toBe(0);
    expect(await allFileText(base)).not.toContain(token);
  });

  it('on a non-loopback bind: no token, a warning, and a 401 (and the CLI) saying the server has none', async () => {
    const all = await startAll('wildcard', { FLUX_HOST: '0.0.0.0' });
    expect(all.stderr()).not.toMatch(/FLUX_API_TOKEN=/);
    expect(all.stdout()).toMatch(/"level":"warn".*no FLUX_API_TOKENS and FLUX_HOST is not loopback/);
    const res = await fetch(`${all.url}/api/ops/v1/status`, { headers: { authorization: 'Bearer x' } });
    expect(res.status).toBe(401);
    expect(await res.json()).toMatchObject({ code: 'unauthorized', tokensConfigured: false });

    const bare = await cli(['backup', 'status'], { FLUX_API_BASE: all.url });
    expect(bare.exitCode).toBe(EXIT.noPermission);
    expect(bare.stderr).toMatch(/^flux-ops: this server has no API tokens \(FLUX_API_TOKENS is empty\)/);
    expect(bare.stderr).not.toMatch(/Set FLUX_API_TOKEN to a token/);
    const withToken = await cli(['backup', 'status'], { FLUX_API_BASE: all.url, FLUX_API_TOKEN: 'abc' });
    expect(withToken.stderr).toMatch(/no API tokens.*FLUX_API_TOKEN is set, but no token can pass/);
    all.child.kill('SIGTERM');
    expect((await all.child).exitCode).toBe(0);
  });

  it('with FLUX_API_TOKENS set: no dev token', async () => {
    const all = await startAll('configured', {
      FLUX_HOST: '127.0.0.1',
      FLUX_API_TOKENS: `ops:${'a'.repeat(64)}:admin`,
    });
    expect(all.stderr()).not.toMatch(/FLUX_API_TOKEN=/);
    all.child.kill('SIGTERM');
    expect((await all.child).exitCode).toBe(0);
  });
});

describe('the CLI pointed at the wrong place', () => {
  let other: Server;
  let otherUrl: string;
  beforeAll(async () => {
    // Something else answering on the port: a web server with its own 404 page.
    other = createServer((_req, res) => {
      res.writeHead(404, { 'content-type': 'text/html' }).end('<html><h1>Not Found</h1></html>');
    });
    await new Promise<void>((resolve) => other.listen(0, '127.0.0.1', resolve));
    otherUrl = `http://127.0.0.1:${(other.address() as AddressInfo).port}`;
  });
  afterAll(() => new Promise((resolve) => other.close(resolve)));

  it('a server that answers but is not flux-ops: exit 69 (not 66), saying where FLUX_API_BASE points', async () => {
    const r = await cli(['backup', 'status'], { FLUX_API_BASE: otherUrl, FLUX_API_TOKEN: 't' });
    expect(r.exitCode).toBe(EXIT.unavailable);
    expect(r.stderr).toMatch(
      new RegExp(`^flux-ops: HTTP 404 from ${otherUrl} \\(from FLUX_API_BASE\\) .* is not a flux-ops answer`),
    );
    expect(r.stderr).toMatch(/point FLUX_API_BASE \(or --api-base\) at the flux-ops front door/);
  });

  it('FLUX_API_BASE=localhost:8080 is told to add http://', async () => {
    const r = await cli(['backup', 'status'], { FLUX_API_BASE: 'localhost:8080', FLUX_API_TOKEN: 't' });
    expect(r.exitCode).toBe(EXIT.usage);
    expect(r.stderr).toBe(
      'flux-ops: FLUX_API_BASE=localhost:8080 has no scheme: add http:// (FLUX_API_BASE=http://localhost:8080), or https:// behind TLS',
    );
    const flag = await cli(['backup', 'status', '--api-base', '127.0.0.1:9'], { FLUX_API_TOKEN: 't' });
    expect(flag.stderr).toMatch(/^flux-ops: --api-base=127\.0\.0\.1:9 has no scheme: add http:\/\//);
  });
});

describe('a second process on a port in use', () => {
  it('says so in one line on stderr, before it logs, builds or shows a token', async () => {
    const blocker = createTcpServer();
    await new Promise<void>((resolve) => blocker.listen(0, '127.0.0.1', resolve));
    const port = (blocker.address() as AddressInfo).port;
    try {
      const base = path.join(testEnv.root, 'port-taken');
      const env = {
        ...testEnv.env,
        FLUX_HOST: '127.0.0.1',
        FLUX_STATE_DIR: path.join(base, 'state'),
        FLUX_BACKUPS_LOCAL_DIR: path.join(base, 'backups'),
        FLUX_BACKUPS_OFFSITE_DIR: path.join(base, 'offsite'),
      };
      for (const [main, variable] of [
        ['functions/all/main.ts', 'FLUX_PORT'],
        ['functions/dump/main.ts', 'FLUX_DUMP_PORT'],
      ] as const) {
        const r = await execa(process.execPath, ['--import', 'tsx', main], {
          cwd: ROOT,
          env: { ...env, [variable]: String(port) },
          extendEnv: false,
          reject: false,
          stdin: 'ignore',
        });
        expect(r.exitCode, main).toBe(EXIT.tempFail);
        expect(String(r.stderr), main).toMatch(
          new RegExp(
            `^flux-ops (all|dump): port ${port} on 127\\.0\\.0\\.1 is already in use \\(is this function already running\\?\\): stop that process, or set ${variable} to a free port$`,
          ),
        );
        // Not a log line before it (no "starting" with the whole config, no function's notes).
        expect(String(r.stdout), main).toBe('');
      }
      // Nothing but the owner locks' directories (taken first, released on the way out).
      expect((await readdir(path.join(base, 'state'), { recursive: true })).sort()).toEqual(['owners']);
      expect(await readdir(path.join(base, 'backups'))).toEqual([]);
    } finally {
      await new Promise((resolve) => blocker.close(resolve));
    }
  });
});
