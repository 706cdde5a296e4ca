// Packaging, as a fresh checkout meets it: a copy of the repository without node_modules, production
// dependencies only (npm ci --omit=dev, from the local npm cache), dist/ built beside it as the image's
// build stage does; then the CLI's --help, the packed file list, and the all-in-one from dist/ answering
// /healthz and an authenticated route with its dev token. No dev dependency (tsx, typescript) is there.
import { copyFile, mkdir, mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ROOT } from './support/faults.js';
import { freePort } from './support/pg.js';
import { eventually } from './support/runtime.js';

let work: string;
let fresh: string;
const baseEnv = { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '/tmp' };

beforeAll(async () => {
  work = await mkdtemp(path.join(tmpdir(), 'flux-ops-package-'));
  fresh = path.join(work, 'flux-ops');
  await mkdir(fresh);
  // Every file git knows (tracked, or new and not ignored): what a clone of this tree holds.
  const listed = await execa('git', ['ls-files', '-z', '-co', '--exclude-standard'], { cwd: ROOT });
  const files = listed.stdout.split('\0').filter(Boolean);
  for (const file of files) {
    await mkdir(path.dirname(path.join(fresh, file)), { recursive: true });
    await copyFile(path.join(ROOT, file), path.join(fresh, file)).catch((error: unknown) => {
      // A file deleted in the working tree but not yet in the index.
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
    });
  }
  // At once: the production install in the copy, and the build (with this checkout's dev tools) into it.
  await Promise.all([
    execa('npm', ['ci', '--omit=dev', '--prefer-offline', '--ignore-scripts', '--no-audit', '--no-fund'], {
      cwd: fresh,
      env: { ...baseEnv, npm_config_update_notifier: 'false' },
      extendEnv: false,
    }),
    execa(
      process.execPath,
      [
        path.join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'),
        '-p',
        'tsconfig.build.json',
        '--outDir',
        path.join(fresh, 'dist'),
      ],
      { cwd: ROOT },
    ),
  ]);
}, 240_000);
afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

describe('a production install (npm ci --omit=dev) with dist/ built', () => {
  it('holds no dev dependency', async () => {
    const installed = await readdir(path.join(fresh, 'node_modules'));
    expect(installed).toEqual(expect.arrayContaining(['hono', 'pg', 'zod']));
    for (const dev of ['tsx', 'typescript', 'vitest', '@biomejs']) expect(installed).not.toContain(dev);
  });

  it('runs the CLI: --help and --version', async () => {
    const help = await execa(process.execPath, ['bin/flux-ops.mjs', '--help'], {
      cwd: fresh,
      env: baseEnv,
      extendEnv: false,
      reject: false,
    });
    expect(help.stderr).toBe('');
    expect(help.exitCode).toBe(0);
    expect(help.stdout).toMatch(/^flux-ops 0\.1\.0: operate self-hosted Flux/);
    expect(help.stdout).toMatch(/^ {2}doctor /m);
    const version = await execa(process.execPath, ['bin/flux-ops.mjs', '--version'], {
      cwd: fresh,
      env: baseEnv,
      extendEnv: false,
    });
    expect(version.stdout).toBe('0.1.0');
  });

  it('packs the launcher, dist/ and the PATH wrapper, and no sources or tests', async () => {
    const packed = await execa('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], {
      cwd: fresh,
      env: { ...baseEnv, npm_config_update_notifier: 'false' },
      extendEnv: false,
    });
    const files = (JSON.parse(packed.stdout) as Array<{ files: Array<{ path: string }> }>)[0]!.files.map(
      (f) => f.path,
    );
    expect(files).toEqual(
      expect.arrayContaining([
        'bin/flux-ops.mjs',
        'dist/cli/main.js',
        'dist/functions/all/main.js',
        'dist/functions/router/healthcheck.js',
        'scripts/with-pg-path.sh',
        'package.json',
      ]),
    );
    expect(files.filter((f) => f.startsWith('test/') || /\.test\.js$/.test(f) || f.endsWith('.ts'))).toEqual(
      [],
    );
  });

  it('starts the all-in-one from dist/ (npm run start:built): /healthz and a route with the dev token', async () => {
    const port = await freePort();
    const child = execa('sh', ['scripts/with-pg-path.sh', 'node', 'dist/functions/all/main.js'], {
      cwd: fresh,
      env: { ...baseEnv, FLUX_PORT: String(port), FLUX_PROBE_INTERVAL_MS: '0' },
      extendEnv: false,
      reject: false,
      buffer: false,
      forceKillAfterDelay: false,
    });
    let err = '';
    child.stderr?.on('data', (chunk: Buffer) => {
      err += chunk.toString();
    });
    child.stdout?.resume();
    try {
      const url = `http://127.0.0.1:${port}`;
      const token = await eventually(async () => {
        if (child.exitCode !== null) throw new Error(`exited ${child.exitCode}: ${err}`);
        return (await fetch(`${url}/healthz`)).ok && /^export FLUX_API_TOKEN=(\S+)$/m.exec(err)?.[1];
      }, 60_000);
      const status = await fetch(`${url}/api/ops/v1/status`, {
        headers: { authorization: `Bearer ${token}` },
      });
      expect(status.status).toBe(200);
      const ready = (await (await fetch(`${url}/readyz`)).json()) as { functions: Record<string, unknown> };
      expect(Object.keys(ready.functions).sort()).toEqual(
        ['dump', 'migrate', 'probe', 'replicate', 'restore', 'verify'].sort(),
      );
    } finally {
      child.kill('SIGTERM');
      await child;
    }
    expect(child.exitCode).toBe(0);
  });
});

describe('the launcher without dist/ and without tsx', () => {
  it('says what to do instead of a module-not-found trace', async () => {
    const bare = path.join(work, 'bare');
    await mkdir(path.join(bare, 'bin'), { recursive: true });
    await copyFile(path.join(ROOT, 'bin', 'flux-ops.mjs'), path.join(bare, 'bin', 'flux-ops.mjs'));
    const r = await execa(process.execPath, ['bin/flux-ops.mjs', '--help'], {
      cwd: bare,
      env: baseEnv,
      extendEnv: false,
      reject: false,
    });
    expect(r.exitCode).toBe(70);
    expect(r.stderr).toBe(
      'flux-ops: this install has neither the built CLI (dist/cli/main.js) nor tsx to run the sources: ' +
        'run npm run build where the dev dependencies are installed, or install a packed flux-ops (npm pack)',
    );
  });
});
