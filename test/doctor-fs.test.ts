// flux-ops doctor looks and never touches: run as a real CLI process, it creates no directory and leaves
// every file under the trees it inspects as it found them (a probe file it writes to prove a directory
// writable is removed); next to `npm start`'s ./.flux-data it takes the embedded profile itself.
import { createHash } from 'node:crypto';
import { lstat, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ROOT } from './support/faults.js';

const BIN = path.join(ROOT, 'bin', 'flux-ops.mjs');
let root: string;

beforeAll(async () => {
  root = await mkdtemp(path.join(tmpdir(), 'flux-doctor-fs-'));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

/** Every directory and file under `dir` (relative path → kind, mode, a file's mtime and sha256). */
async function snapshot(dir: string): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for (const rel of await readdir(dir, { recursive: true }).catch(() => [] as string[])) {
    const full = path.join(dir, rel);
    const s = await lstat(full);
    const bytes = s.isFile()
      ? createHash('sha256')
          .update(await readFile(full))
          .digest('hex')
      : '';
    out.set(rel, `${s.isDirectory() ? 'dir' : 'file'} ${s.mode} ${s.isFile() ? s.mtimeMs : ''} ${bytes}`);
  }
  return out;
}

function doctor(args: string[], cwd: string, env: Record<string, string> = {}) {
  return execa(process.execPath, [BIN, 'doctor', ...args], {
    cwd,
    env: {
      PATH: process.env.PATH ?? '',
      HOME: process.env.HOME ?? '/tmp',
      FLUX_VERIFY_DRIVER: 'local',
      ...env,
    },
    extendEnv: false,
    reject: false,
    stdin: 'ignore',
    timeout: 120_000,
  });
}

describe('flux-ops doctor leaves the filesystem as it found it', () => {
  it('--embedded in a fresh checkout: no ./.flux-data appears, and nothing else under the directory', async () => {
    const cwd = path.join(root, 'fresh');
    await mkdir(path.join(cwd, 'tmp'), { recursive: true });
    await writeFile(path.join(cwd, 'package.json'), '{}');
    const before = await snapshot(cwd);
    const r = await doctor(['--embedded'], cwd);
    expect(r.stdout).toMatch(/^config/m);
    expect(r.stdout).toMatch(/FLUX_STATE_DIR.*does not exist yet/);
    expect(await snapshot(cwd)).toEqual(before);
  });

  it('production profile with directories that do not exist: none of them is created', async () => {
    const cwd = path.join(root, 'prod');
    await mkdir(path.join(cwd, 'tmp'), { recursive: true });
    const data = path.join(cwd, 'srv');
    const env = {
      FLUX_STATE_DIR: path.join(data, 'state'),
      FLUX_BACKUPS_LOCAL_DIR: path.join(data, 'backups'),
      FLUX_BACKUPS_OFFSITE_DIR: path.join(data, 'offsite'),
      FLUX_VERIFY_LOCAL_DIR: path.join(data, 'verify-scratch'),
      FLUX_PROJECTS_FILE: path.join(data, 'projects.json'),
    };
    const before = await snapshot(cwd);
    await doctor([], cwd, env);
    expect(await snapshot(cwd)).toEqual(before);
  });

  it('existing directories with data: every file and directory unchanged (the probe file removed)', async () => {
    const cwd = path.join(root, 'existing');
    const data = path.join(cwd, '.flux-data');
    for (const d of ['state/outbox/dump', 'backups', 'backups-offsite', 'tmp'])
      await mkdir(path.join(d === 'tmp' ? cwd : data, d), { recursive: true });
    await writeFile(path.join(data, 'projects.json'), JSON.stringify({ clusters: [], projects: [] }));
    await writeFile(path.join(data, 'backups', 'note.txt'), 'keep me');
    const before = await snapshot(cwd);
    const r = await doctor(['--embedded'], cwd);
    expect(r.stdout).toMatch(/ok {4}dir:FLUX_BACKUPS_LOCAL_DIR: .* writable/);
    expect(await snapshot(cwd)).toEqual(before);
  });
});

describe('flux-ops doctor next to npm start', () => {
  it('takes the embedded profile when ./.flux-data is there and no directory variable is set', async () => {
    const cwd = path.join(root, 'beside-start');
    await mkdir(path.join(cwd, '.flux-data', 'state'), { recursive: true });
    await mkdir(path.join(cwd, 'tmp'), { recursive: true });
    const r = await doctor([], cwd);
    expect(r.stdout).toMatch(
      /ok {4}profile: embedded \(found \.\/\.flux-data, as npm start makes it; --embedded says so explicitly\)/,
    );
    expect(r.stdout).toContain(path.join(cwd, '.flux-data', 'state'));
    expect(r.stdout).not.toContain('/srv/flux');
  });

  it('with no FLUX_API_TOKENS on a loopback all-in-one: the dev token is no failure', async () => {
    const cwd = path.join(root, 'beside-start');
    const r = await doctor(['--embedded'], cwd);
    expect(r.stdout).toMatch(/ok {4}FLUX_API_TOKENS: none: npm start on loopback makes a dev token/);
  });
});
