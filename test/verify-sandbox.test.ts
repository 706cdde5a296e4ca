// The sandbox drivers against the one contract (local always; docker against the real engine and the
// locally built image), plus what is particular to each: container isolation and labels, the local
// cluster's throwaway settings and unprivileged server, and the unavailable cases.
import { randomUUID } from 'node:crypto';
import { chmod, mkdtemp, readdir, readFile, readlink, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import Docker from 'dockerode';
import { execa } from 'execa';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createDockerDriver } from '../shared/sandbox/docker.js';
import { LABEL, SPARE_NAME_PREFIX, sandboxNamePrefix } from '../shared/sandbox/docker-engine.js';
import { createLocalDriver } from '../shared/sandbox/local.js';
import { LOCAL_MARKER, LOCAL_SANDBOX_PREFIX, type LocalMarker } from '../shared/sandbox/local-marker.js';
import { queryJson, runSql } from '../shared/sandbox/query.js';
import type { Sandbox } from '../shared/sandbox/types.js';
import { descendantsOf, isAlive, processesWith } from './support/faults.js';
import { type PgCluster, startPostgres } from './support/pg.js';
import { eventually } from './support/runtime.js';
import { describeDocker, dockerGate, sandboxContract } from './support/sandbox-contract.js';

const SOCKET = process.env.FLUX_DOCKER_SOCKET ?? '/var/run/docker.sock';
const IMAGE = process.env.FLUX_TEST_VERIFY_IMAGE ?? 'flux-ops/postgres-verify:15';
const ROWS = 50;
const IDS = { projectId: '00000000-0000-4000-8000-000000000001', backupId: '01J00000000000000000000001' };

let cluster: PgCluster;
let work: string;
let dumpFile: string;

beforeAll(async () => {
  work = await mkdtemp(path.join(tmpdir(), 'flux-verify-sandbox-test-'));
  cluster = await startPostgres();
  await cluster.query(
    `CREATE TABLE public.items (id int PRIMARY KEY, label text NOT NULL);
     INSERT INTO public.items SELECT g, md5(g::text) FROM generate_series(1, ${ROWS}) g`,
  );
  dumpFile = path.join(work, 'fixture.dump');
  await execa('pg_dump', ['--format=custom', '--no-owner', '--no-acl', `--file=${dumpFile}`], {
    env: cluster.env(),
  });
});

afterAll(async () => {
  await cluster?.destroy();
  if (work) await rm(work, { recursive: true, force: true });
});

// ---------------------------------------------------------------------------------------------- local

const localBase = await mkdtemp(path.join(tmpdir(), 'flux-verify-local-test-'));
// mkdtemp makes 0700; as root the sandbox server runs as another user, who must be able to traverse it.
await chmod(localBase, 0o755);
afterAll(() => rm(localBase, { recursive: true, force: true }));

/** Sandbox directories (a spare or the template counts only with `all`). */
async function localDirs(all = false): Promise<string[]> {
  const out: string[] = [];
  for (const name of await readdir(localBase).catch(() => [] as string[])) {
    if (!name.startsWith(LOCAL_SANDBOX_PREFIX)) continue;
    const marker = await readFile(path.join(localBase, name, LOCAL_MARKER), 'utf8').catch(() => '{}');
    const state = (JSON.parse(marker) as Partial<LocalMarker>).state;
    if (all || state === undefined || state === 'active') out.push(path.join(localBase, name));
  }
  return out.sort();
}
const localLeftovers = () => localDirs();

/** The postmaster of a local sandbox (its pid as this process sees it: inside the boundary it has another). */
function postmasterOf(dir: string): number {
  const [postmaster] = processesWith(path.join(dir, 'data')).filter(
    (p) => p.argv[0]?.endsWith('/postgres') && p.argv.includes('-D'),
  );
  if (!postmaster) throw new Error(`no postmaster serves ${dir}`);
  return postmaster.pid;
}

const namespaceOf = (pid: number | 'self', kind: string) => readlink(`/proc/${pid}/ns/${kind}`);

sandboxContract({
  name: 'local',
  makeDriver: () => createLocalDriver({ pathEnv: process.env.PATH, baseDir: localBase }),
  fixture: () => ({ dumpFile, rows: ROWS }),
  leftovers: localLeftovers,
  all: () => localDirs(true),
});

describe('local sandbox', () => {
  const driver = createLocalDriver({ pathEnv: process.env.PATH, baseDir: localBase, spare: false });
  let sandbox: Sandbox | undefined;
  afterEach(async () => {
    await sandbox?.destroy();
    sandbox = undefined;
    expect(await localLeftovers()).toEqual([]);
  });
  afterAll(() => driver.close());

  it('runs with throwaway settings, no TCP, and an unprivileged server even when we are root', async () => {
    sandbox = await driver.create({ ...IDS, ttlMs: 60_000 });
    const settings = await queryJson<{ name: string; setting: string }>(
      sandbox,
      `SELECT name, setting FROM pg_settings WHERE name IN
         ('fsync', 'full_page_writes', 'synchronous_commit', 'wal_level', 'max_wal_senders', 'listen_addresses', 'maintenance_work_mem', 'archive_mode')
       ORDER BY name`,
      'settings',
    );
    const byName = Object.fromEntries(settings.map((s) => [s.name, s.setting]));
    expect(byName).toMatchObject({
      fsync: 'off',
      full_page_writes: 'off',
      synchronous_commit: 'off',
      wal_level: 'minimal',
      max_wal_senders: '0',
      archive_mode: 'off',
      listen_addresses: '',
    });
    expect(Number(byName.maintenance_work_mem)).toBeGreaterThanOrEqual(64 * 1024); // kB
    // The socket lives in the sandbox's own directory.
    const [dir] = await queryJson<{ d: string }>(
      sandbox,
      `SELECT current_setting('unix_socket_directories') AS d`,
      'dir',
    );
    expect(dir?.d.startsWith(sandbox.id)).toBe(true);
    const pid = postmasterOf(sandbox.id);
    const uid = Number(/^Uid:\s+(\d+)/m.exec(await readFile(`/proc/${pid}/status`, 'utf8'))?.[1]);
    expect(uid).not.toBe(0);
    if (process.getuid?.() !== 0) expect(uid).toBe(process.getuid?.());
    // Inside its own boundary: no network, filesystem, process table or IPC shared with this process.
    for (const kind of ['net', 'mnt', 'pid', 'ipc', 'uts']) {
      expect(await namespaceOf(pid, kind), kind).not.toBe(await namespaceOf('self', kind));
    }
    const dirToRemove = sandbox.id;
    await sandbox.destroy();
    sandbox = undefined;
    await expect(readdir(dirToRemove)).rejects.toMatchObject({ code: 'ENOENT' });
    expect(isAlive(pid)).toBe(false);
  });

  it('starts from a small template: only the postgres database, 1 MB WAL segments', async () => {
    sandbox = await driver.create({ ...IDS, ttlMs: 60_000 });
    const [row] = await queryJson<{ dbs: string[]; seg: string }>(
      sandbox,
      `SELECT array_agg(datname ORDER BY datname) AS dbs, current_setting('wal_segment_size') AS seg
         FROM pg_database`,
      'databases',
    );
    expect(row).toEqual({ dbs: ['postgres'], seg: '1MB' });
    // What every sandbox copies: the template and the copy are a third of a stock initdb's 39 MB.
    const { stdout } = await execa('du', ['-sm', path.join(sandbox.id, 'data')]);
    expect(Number(stdout.split('\t')[0])).toBeLessThan(20);
  });

  it('reports missing tools as unavailable with the fix, never as a broken backup', async () => {
    const bare = createLocalDriver({ pathEnv: '/nonexistent', baseDir: localBase, spare: false });
    const status = await bare.status();
    expect(status).toMatchObject({ ok: false, reason: 'tools_missing' });
    expect(status.detail).toMatch(/initdb not found on PATH/);
    await expect(bare.create({ ...IDS, ttlMs: 60_000 })).rejects.toMatchObject({
      code: 'unverifiable',
      details: { reason: 'tools_missing' },
    });
    await bare.close();
  });

  it('removes the directory and server of a sandbox whose owner died', async () => {
    // A real crash: a child process creates a sandbox and is SIGKILLed before it can clean up.
    const script = `
      import { createLocalDriver } from ${JSON.stringify(path.resolve('shared/sandbox/local.ts'))};
      const d = createLocalDriver({ pathEnv: process.env.PATH, baseDir: ${JSON.stringify(localBase)}, spare: false });
      const s = await d.create({ projectId: '${IDS.projectId}', backupId: '${IDS.backupId}', ttlMs: 3600000 });
      console.log(s.id);
      setInterval(() => {}, 1000);`;
    const child = execa(process.execPath, ['--import', 'tsx', '--input-type=module', '--eval', script], {
      env: process.env,
      reject: false,
      cleanup: true,
    });
    const dir = await new Promise<string>((resolve, reject) => {
      child.stdout?.on('data', (b: Buffer) => resolve(b.toString().trim()));
      child.catch(reject);
    });
    const pid = postmasterOf(dir);
    const marker = JSON.parse(await readFile(path.join(dir, 'sandbox.json'), 'utf8')) as LocalMarker;
    const owner = marker.ownerPid;
    expect(owner).toBe(child.pid);
    expect(marker.serverPid).toBeGreaterThan(0);
    process.kill(owner, 'SIGKILL');
    await child;
    expect(await localLeftovers()).toEqual([dir]);
    expect(await driver.reap()).toBe(1);
    expect(await localLeftovers()).toEqual([]);
    await expect(readdir(dir)).rejects.toMatchObject({ code: 'ENOENT' });
    expect(isAlive(pid)).toBe(false);
    expect(isAlive(marker.serverPid!)).toBe(false);
  });

  it('hands out no spare whose server restarted after it was ready: a fresh one serves', async () => {
    const before = new Set(await localDirs(true));
    const withSpare = createLocalDriver({ pathEnv: process.env.PATH, baseDir: localBase });
    try {
      await withSpare.status();
      await eventually(() => withSpare.spareState() === 'ready', 60_000);
      const spareDir = await eventually(async () => {
        for (const dir of await localDirs(true)) {
          if (before.has(dir)) continue;
          const marker = JSON.parse(await readFile(path.join(dir, LOCAL_MARKER), 'utf8').catch(() => '{}'));
          if ((marker as Partial<LocalMarker>).state === 'spare') return dir;
        }
        return undefined;
      });
      // One of its server's processes killed: the postmaster ends every session (the held one too) and
      // restarts. Once they are all gone, that session is gone on the server's side.
      const children = descendantsOf(postmasterOf(spareDir)).map((p) => p.pid);
      expect(children.length).toBeGreaterThan(0);
      process.kill(children[0]!, 'SIGKILL');
      await eventually(() => children.every((pid) => !isAlive(pid)), 30_000);
      sandbox = await withSpare.create({ ...IDS, ttlMs: 60_000 });
      expect(sandbox.id).not.toBe(spareDir);
      const answered = await runSql(sandbox, 'SELECT 1');
      expect(answered.stderr).toBe('');
      expect(answered.stdout).toBe('1');
    } finally {
      await sandbox?.destroy();
      sandbox = undefined;
      await withSpare.close();
    }
  });

  it('a process that handles SIGTERM still stops gracefully while its spare server runs', async () => {
    // The process edge answers SIGTERM with a graceful stop (process.once, as shared/kit/serve.ts does).
    // A server kept running must not turn that into death by signal: execa's cleanup hook would re-raise
    // the SIGTERM once no other listener is left, before close() removed anything.
    const script = `
      import { createLocalDriver } from ${JSON.stringify(path.resolve('shared/sandbox/local.ts'))};
      const d = createLocalDriver({ pathEnv: process.env.PATH, baseDir: ${JSON.stringify(localBase)} });
      process.once('SIGTERM', () => void d.close().then(() => process.exit(0)));
      await d.status();
      setInterval(() => {}, 1000);`;
    const child = execa(process.execPath, ['--import', 'tsx', '--input-type=module', '--eval', script], {
      env: process.env,
      reject: false,
      cleanup: true,
    });
    const ownDirs = async () => {
      const out: Array<{ dir: string; marker: LocalMarker }> = [];
      for (const dir of await localDirs(true)) {
        const marker = JSON.parse(await readFile(path.join(dir, LOCAL_MARKER), 'utf8').catch(() => '{}'));
        if (marker.ownerPid === child.pid) out.push({ dir, marker });
      }
      return out;
    };
    // The spare's server is up: its postmaster.pid says ready.
    for (const deadline = Date.now() + 60_000; ; ) {
      const spare = (await ownDirs()).find((d) => d.marker.state === 'spare');
      const pidFile = spare
        ? await readFile(path.join(spare.dir, 'data', 'postmaster.pid'), 'utf8').catch(() => '')
        : '';
      if (pidFile.split('\n')[7]?.trim() === 'ready') break;
      if (Date.now() > deadline) throw new Error(`no spare came up: ${JSON.stringify(await ownDirs())}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    child.kill('SIGTERM');
    const result = await child;
    expect({ exitCode: result.exitCode, signal: result.signal }).toEqual({ exitCode: 0, signal: undefined });
    expect(await ownDirs()).toEqual([]);
  });
});

describe('local sandbox: preparations cancelled or closed', () => {
  // A directory of their own: what is left behind is told from the other drivers' templates and spares.
  let base: string;
  beforeAll(async () => {
    base = await mkdtemp(path.join(tmpdir(), 'flux-verify-local-cancel-test-'));
    await chmod(base, 0o755);
  });
  afterAll(() => rm(base, { recursive: true, force: true }));
  const entries = async () => (await readdir(base)).sort();
  const running = (tool: string) =>
    processesWith(base).some((p) => p.argv.some((a) => a === tool || a.endsWith(`/${tool}`)));
  const makeDriver = () => createLocalDriver({ pathEnv: process.env.PATH, baseDir: base, spare: false });

  it('a cancelled verification stops waiting for the template at once; the next one uses it', async () => {
    const driver = makeDriver();
    try {
      const controller = new AbortController();
      const creating = driver.create({ ...IDS, ttlMs: 60_000, signal: controller.signal });
      creating.catch(() => undefined);
      await eventually(() => running('initdb'), 60_000, 5);
      controller.abort(new Error('verification cancelled'));
      await expect(creating).rejects.toThrow('verification cancelled');
      // Rejected while the template's initdb still runs: the cancelled verification waited for nothing.
      expect(running('initdb')).toBe(true);
      const sandbox = await driver.create({ ...IDS, ttlMs: 60_000 });
      await sandbox.destroy();
    } finally {
      await driver.close();
    }
    expect(await entries()).toEqual([]);
    expect(processesWith(base)).toEqual([]);
  });

  it('close() during each step of a preparation returns, leaving no directory and no server', async () => {
    // initdb of the template, the copy (its directory exists), the server starting (its wrapper runs).
    const steps = {
      initdb: async () => running('initdb'),
      copy: async () =>
        (await entries()).some((n) => n.startsWith(LOCAL_SANDBOX_PREFIX) && n !== templateName),
      server: async () => running('unshare') || running('postgres'),
    };
    let templateName: string | undefined;
    for (const [step, reached] of Object.entries(steps)) {
      const driver = makeDriver();
      const creating = driver.create({ ...IDS, ttlMs: 60_000 });
      creating.catch(() => undefined);
      templateName = undefined;
      if (step !== 'initdb') {
        templateName = await eventually(
          async () => (await entries()).find((n) => n.startsWith(LOCAL_SANDBOX_PREFIX)),
          60_000,
          5,
        );
      }
      await eventually(reached, 60_000, 5);
      await driver.close();
      // Cancelled, or (the server won the race) created and removed by close().
      const outcome = await creating.then(
        () => 'created',
        (error: { code?: string }) => error.code,
      );
      expect(['shutting_down', 'created'], step).toContain(outcome);
      expect(await entries(), step).toEqual([]);
      expect(processesWith(base), step).toEqual([]);
    }
  });
});

// --------------------------------------------------------------------------------------------- docker

const gate = await dockerGate(SOCKET, IMAGE);
const instance = `test-sandbox-${randomUUID()}`;
const docker = new Docker({ socketPath: SOCKET });

/** This file's containers: sandboxes only, or (`which`) the spares, or all. */
async function dockerContainers(which: 'sandboxes' | 'spares' | 'all' = 'sandboxes'): Promise<string[]> {
  const containers = await docker.listContainers({
    all: true,
    filters: { label: [`${LABEL.verify}=1`, `${LABEL.instance}=${instance}`] },
  });
  const isSpare = (c: Docker.ContainerInfo) => c.Names.some((n) => n.startsWith(`/${SPARE_NAME_PREFIX}`));
  return containers
    .filter((c) => which === 'all' || (which === 'spares') === isSpare(c))
    .map((c) => c.Id)
    .sort();
}
const dockerLeftovers = () => dockerContainers();

/** The one spare of this file, once it exists. */
async function theSpare(): Promise<string> {
  for (const deadline = Date.now() + 120_000; Date.now() < deadline; ) {
    const spares = await dockerContainers('spares');
    if (spares.length > 1) throw new Error(`more than one spare: ${spares.join(', ')}`);
    if (spares[0]) return spares[0];
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error('no spare container appeared');
}

const makeDocker = (
  overrides: {
    socketPath?: string;
    image?: string;
    spare?: boolean;
    concurrency?: number;
    cpus?: number;
  } = {},
) =>
  createDockerDriver({
    socketPath: overrides.socketPath ?? SOCKET,
    image: overrides.image ?? IMAGE,
    memoryMb: 512,
    cpus: overrides.cpus ?? 1,
    pids: 256,
    instance,
    spare: overrides.spare ?? false,
    concurrency: overrides.concurrency ?? 1,
  });

describeDocker(gate, 'docker sandbox', () => {
  sandboxContract({
    name: 'docker',
    makeDriver: () => makeDocker({ spare: true }),
    fixture: () => ({ dumpFile, rows: ROWS }),
    leftovers: dockerLeftovers,
    all: () => dockerContainers('all'),
  });

  describe('isolation', () => {
    const driver = makeDocker();
    let sandbox: Sandbox | undefined;
    afterEach(async () => {
      await sandbox?.destroy();
      sandbox = undefined;
      expect(await dockerLeftovers()).toEqual([]);
    });
    afterAll(() => driver.close());

    it('runs without network, with limits and labels, and no bind mount', async () => {
      sandbox = await driver.create({ ...IDS, ttlMs: 60_000 });
      const info = await docker.getContainer(sandbox.id).inspect();
      expect(info.HostConfig.NetworkMode).toBe('none');
      expect(info.HostConfig.Memory).toBe(512 * 1024 * 1024);
      expect(info.HostConfig.NanoCpus).toBe(1e9);
      expect(info.HostConfig.PidsLimit).toBe(256);
      expect(info.HostConfig.Binds ?? []).toEqual([]);
      expect(info.Mounts.filter((m) => m.Type === 'bind')).toEqual([]);
      expect(info.Config.Labels).toMatchObject({
        [LABEL.verify]: '1',
        [LABEL.backupId]: IDS.backupId,
        [LABEL.projectId]: IDS.projectId,
        [LABEL.instance]: instance,
      });
      expect(Date.parse(info.Config.Labels[LABEL.expiresAt] ?? '')).toBeGreaterThan(Date.now());
      // Only loopback inside.
      const nets = await sandbox.exec(['cat', '/proc/net/dev']);
      const interfaces = nets.stdout
        .split('\n')
        .slice(2)
        .map((l) => l.split(':')[0]?.trim())
        .filter(Boolean);
      expect(interfaces).toEqual(['lo']);
      const settings = await queryJson<Record<string, string>>(
        sandbox,
        `SELECT current_setting('fsync') AS fsync, current_setting('wal_level') AS wal_level,
                current_setting('max_parallel_maintenance_workers') AS maintenance_workers,
                current_setting('max_parallel_workers_per_gather') AS gather_workers`,
        'settings',
      );
      // One CPU: no parallel workers to share it with the leader.
      expect(settings).toEqual([
        { fsync: 'off', wal_level: 'minimal', maintenance_workers: '0', gather_workers: '0' },
      ]);
    });

    it('a CPU limit above what the engine has is lowered to it (the engine refuses more)', async () => {
      const ncpu = (await docker.info()).NCPU as number;
      // The engine itself refuses such a container: the clamp is what lets this default work on small hosts.
      const refused = await docker
        .createContainer({ Image: IMAGE, HostConfig: { NanoCpus: (ncpu + 1) * 1e9, NetworkMode: 'none' } })
        .then(
          async (c) => {
            await c.remove({ force: true });
            return undefined;
          },
          (error: Error) => error.message,
        );
      expect(refused).toMatch(/CPUs/);
      const greedy = makeDocker({ cpus: ncpu + 1 });
      try {
        sandbox = await greedy.create({ ...IDS, ttlMs: 60_000 });
        expect((await docker.getContainer(sandbox.id).inspect()).HostConfig.NanoCpus).toBe(ncpu * 1e9);
        const [workers] = await queryJson<{ n: string }>(
          sandbox,
          `SELECT current_setting('max_parallel_maintenance_workers') AS n`,
          'workers',
        );
        expect(workers?.n).toBe(String(ncpu - 1));
      } finally {
        await sandbox?.destroy();
        sandbox = undefined;
        await greedy.close();
      }
    });

    it('a spare serves one verification only: renamed after its backup, same limits, then replaced', async () => {
      const spared = makeDocker({ spare: true });
      try {
        expect(spared.spareState()).toBe('none');
        expect(await spared.status()).toMatchObject({ ok: true });
        expect(spared.spareState()).not.toBe('none');
        const first = await theSpare();
        await eventually(async () => spared.spareState() === 'ready' || undefined, 90_000);
        sandbox = await spared.create({ ...IDS, ttlMs: 60_000 });
        expect(sandbox.id).toBe(first);
        expect(spared.spareState()).toBe('none');
        const info = await docker.getContainer(first).inspect();
        expect(info.Name.startsWith(`/${sandboxNamePrefix(IDS.backupId)}`)).toBe(true);
        expect(info.HostConfig).toMatchObject({
          NetworkMode: 'none',
          Memory: 512 * 1024 * 1024,
          PidsLimit: 256,
        });
        expect(info.Config.Labels).toMatchObject({ [LABEL.verify]: '1', [LABEL.instance]: instance });
        // Its expiry covers this verification (the reaper of another process leaves it alone).
        expect(Date.parse(info.Config.Labels[LABEL.expiresAt] ?? '')).toBeGreaterThan(Date.now() + 60_000);
        expect(sandbox.versions.serverMajor).toBeGreaterThanOrEqual(12);
        // FLUX_VERIFY_CONCURRENCY=1: no spare is started while the one allowed container serves (its
        // restore keeps the CPU); given time to appear, none does.
        await sandbox.exec(['psql', '-X', '-c', 'SELECT pg_sleep(2)']);
        expect(await dockerContainers('spares')).toEqual([]);
        // The next spare starts once the used sandbox is gone; it is another container, and the next
        // verification gets it, never the used one.
        expect(spared.spareState()).toBe('none');
        await sandbox.destroy();
        sandbox = undefined;
        const second = await theSpare();
        expect(second).not.toBe(first);
        await eventually(async () => spared.spareState() === 'ready' || undefined, 90_000);
        const next = await spared.create({ ...IDS, ttlMs: 60_000 });
        expect(next.id).toBe(second);
        await next.destroy();
        // A verification that may outlive the spare's expiry label starts its own container.
        const third = await theSpare();
        const long = await spared.create({ ...IDS, ttlMs: 24 * 60 * 60_000 });
        expect(long.id).not.toBe(third);
        expect((await docker.getContainer(long.id).inspect()).Config.Labels).toMatchObject({
          [LABEL.backupId]: IDS.backupId,
        });
        await long.destroy();
      } finally {
        await spared.close();
      }
      expect(await dockerContainers('spares')).toEqual([]);
    });

    it('with room for two verifications, the next spare starts while the first one is held', async () => {
      const spared = makeDocker({ spare: true, concurrency: 2 });
      try {
        await spared.status();
        const first = await theSpare();
        sandbox = await spared.create({ ...IDS, ttlMs: 60_000 });
        expect(sandbox.id).toBe(first);
        // No container was removed, yet a new spare comes up: there is room for a second verification.
        const second = await theSpare();
        expect(second).not.toBe(first);
        // Sandboxes and spare together stay within the concurrency: the second verification takes the
        // spare, and no third container starts while both are held.
        const other = await spared.create({ ...IDS, ttlMs: 60_000 });
        expect(other.id).toBe(second);
        await spared.status();
        await other.exec(['psql', '-X', '-c', 'SELECT pg_sleep(2)']);
        expect(await dockerContainers('spares')).toEqual([]);
      } finally {
        await spared.close();
      }
    });

    it('an absent image is unavailable (nothing is pulled)', async () => {
      const missing = makeDocker({ image: `flux-ops/postgres-verify:absent-${Date.now()}` });
      const status = await missing.status();
      expect(status).toMatchObject({ ok: false, reason: 'image_missing' });
      expect(status.detail).toMatch(/never pulls/);
      await expect(missing.create({ ...IDS, ttlMs: 60_000 })).rejects.toMatchObject({
        code: 'unverifiable',
        details: { reason: 'image_missing' },
      });
      await missing.close();
    });
  });
});

describe('docker engine stopped', () => {
  it('is unavailable with the variable to fix, and creates nothing', async () => {
    const dead = makeDocker({ socketPath: path.join(tmpdir(), `no-docker-${randomUUID()}.sock`) });
    const status = await dead.status();
    expect(status).toMatchObject({ ok: false, reason: 'docker_unavailable' });
    expect(status.detail).toMatch(/FLUX_DOCKER_SOCKET=/);
    await expect(dead.create({ ...IDS, ttlMs: 60_000 })).rejects.toMatchObject({
      code: 'unverifiable',
      details: { reason: 'docker_unavailable' },
    });
    expect(await dead.reap()).toBe(0);
    await dead.close();
  });
});
