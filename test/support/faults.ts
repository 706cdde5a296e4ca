/**
 * Fault-injection support: functions as real child processes (`node --import tsx functions/<name>/main.ts`)
 * that can be SIGKILLed by pid and restarted on the same dirs; /proc inspection (children, orphans,
 * process states); freezing a process with SIGSTOP at an observable state; a deduplicating event sink
 * that can be switched down; a throttled `pg_dump` on PATH; small filesystems (tmpfs, else a loop-mounted
 * ext4 image) for full-disk faults; and a second Docker engine on its own socket that can be killed.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createWriteStream, readdirSync, readFileSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, readdir, rm, stat, statfs, writeFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { execa } from 'execa';
import { hashFile, TEMP_PREFIX } from '../../shared/atomic.js';
import type { FunctionName } from '../../shared/config.js';
import type { CloudEvent } from '../../shared/events/envelope.js';
import { verifyWebhook } from '../../shared/events/signature.js';
import { freePort, pgBinPath } from './pg.js';
import { ADMIN, eventually, WEBHOOK_SECRET } from './runtime.js';

export const ROOT = path.resolve(import.meta.dirname, '..', '..');

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

// ---------------------------------------------------------------------------------------------------------
// Functions as real processes

export interface FnProcess {
  name: FunctionName | 'all';
  pid: number;
  port: number;
  url: string;
  /** stdout + stderr so far (bounded to the last few MiB). */
  output(): string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** SIGKILL of the node process itself (by pid), then waits until it has been reaped. */
  kill9(): Promise<void>;
  /** SIGTERM and the exit code. */
  stop(): Promise<number | null>;
  /** fetch against the process with the admin token. */
  fetch(route: string, init?: RequestInit): Promise<Response>;
}

const OUTPUT_MAX_CHARS = 4 * 1024 * 1024;
const started = new Set<ChildProcess>();

/**
 * Starts `functions/<name>/main.ts` (`all`: the all-in-one process, on FLUX_PORT) on a free port with
 * `env` and waits until /healthz answers; `as` runs it as another OS user (uid and primary gid, no
 * supplementary groups), as the image runs it as uid 1001.
 */
export async function startFunction(
  name: FunctionName | 'all',
  env: NodeJS.ProcessEnv,
  options: { as?: { uid: number; gid: number } } = {},
): Promise<FnProcess> {
  const port = await freePort();
  const portVariable = name === 'all' ? 'FLUX_PORT' : `FLUX_${name.toUpperCase()}_PORT`;
  const child = spawn(process.execPath, ['--import', 'tsx', path.join('functions', name, 'main.ts')], {
    cwd: ROOT,
    env: { ...env, FLUX_HOST: '127.0.0.1', [portVariable]: String(port) },
    stdio: ['ignore', 'pipe', 'pipe'],
    ...(options.as ? { uid: options.as.uid, gid: options.as.gid } : {}),
  });
  started.add(child);
  let output = '';
  const collect = (chunk: Buffer) => {
    output += chunk.toString();
    if (output.length > OUTPUT_MAX_CHARS) output = output.slice(-OUTPUT_MAX_CHARS / 2);
  };
  child.stdout?.on('data', collect);
  child.stderr?.on('data', collect);
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('exit', (code, signal) => {
      started.delete(child);
      resolve({ code, signal });
    }),
  );
  const url = `http://127.0.0.1:${port}`;
  const proc: FnProcess = {
    name,
    pid: child.pid!,
    port,
    url,
    output: () => output,
    exited,
    async kill9() {
      if (child.exitCode === null && child.signalCode === null) process.kill(child.pid!, 'SIGKILL');
      await exited;
    },
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      return (await exited).code;
    },
    fetch: (route, init = {}) =>
      fetch(`${url}${route}`, { ...init, headers: { ...ADMIN.header, ...(init.headers ?? {}) } }),
  };
  const early = exited.then(({ code, signal }) => {
    throw new Error(`${name} exited during start-up (${code ?? signal}):\n${output.slice(-4000)}`);
  });
  early.catch(() => undefined);
  await Promise.race([
    early,
    eventually(async () => (await fetch(`${url}/healthz`)).ok, 90_000, 100).catch((error) => {
      throw new Error(`${name} did not become healthy: ${error}\n${output.slice(-4000)}`);
    }),
  ]);
  return proc;
}

/** SIGKILLs every function process this module started that is still running (afterAll). */
export async function killStartedFunctions(): Promise<void> {
  const waits: Array<Promise<unknown>> = [];
  for (const child of started) {
    waits.push(new Promise((resolve) => child.once('exit', resolve)));
    try {
      process.kill(child.pid!, 'SIGCONT');
      process.kill(child.pid!, 'SIGKILL');
    } catch {
      // gone
    }
  }
  await Promise.all(waits);
}

// ---------------------------------------------------------------------------------------------------------
// /proc

export interface ProcInfo {
  pid: number;
  ppid: number;
  /** R, S, D, T, t, Z, X… */
  state: string;
  argv: string[];
}

function readProc(pid: number): ProcInfo | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean);
    return { pid, ppid: Number(rest[1]), state: rest[0] ?? '?', argv };
  } catch {
    return undefined;
  }
}

export function listProcesses(): ProcInfo[] {
  const out: ProcInfo[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const info = readProc(Number(entry));
    if (info) out.push(info);
  }
  return out;
}

/** Every live (not zombie) descendant of `pid`. */
export function descendantsOf(pid: number, procs: ProcInfo[] = listProcesses()): ProcInfo[] {
  const byParent = new Map<number, ProcInfo[]>();
  for (const p of procs) byParent.set(p.ppid, [...(byParent.get(p.ppid) ?? []), p]);
  const out: ProcInfo[] = [];
  const queue = [pid];
  while (queue.length > 0) {
    for (const child of byParent.get(queue.shift()!) ?? []) {
      if (child.state !== 'Z' && child.state !== 'X') out.push(child);
      queue.push(child.pid);
    }
  }
  return out;
}

/** Live processes whose argv contains `needle` somewhere. */
export function processesWith(needle: string): ProcInfo[] {
  return listProcesses().filter(
    (p) => p.state !== 'Z' && p.state !== 'X' && p.argv.some((a) => a.includes(needle)),
  );
}

export function isAlive(pid: number): boolean {
  const info = readProc(pid);
  return info !== undefined && info.state !== 'Z' && info.state !== 'X';
}

/**
 * Waits until `pid` stopped itself at a fault point (FLUX_TEST_FAULT_POINTS: it sends itself SIGSTOP, so
 * its state is T); throws when it exits first or does not get there in time.
 */
export async function stoppedAtFaultPoint(proc: FnProcess, timeoutMs = 120_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const state = readProc(proc.pid)?.state;
    if (state === 'T' || state === 't') return;
    if (state === undefined || state === 'Z' || state === 'X')
      throw new Error(`${proc.name} exited before its fault point:\n${proc.output().slice(-4000)}`);
    if (Date.now() > deadline)
      throw new Error(`${proc.name} did not reach its fault point in time:\n${proc.output().slice(-4000)}`);
    await sleep(10);
  }
}

async function waitStopped(pid: number): Promise<void> {
  for (let i = 0; i < 2000; i++) {
    const state = readProc(pid)?.state;
    if (state === undefined || state === 'T' || state === 't' || state === 'Z') return;
    await sleep(1);
  }
  throw new Error(`process ${pid} did not stop on SIGSTOP`);
}

/**
 * Runs `pid` in short slices (SIGCONT, `runMs`, SIGSTOP) and evaluates `check` only while it is stopped,
 * so the state `check` sees cannot change before the caller acts on it: the process is left stopped when
 * `check` returns a value (SIGKILL works on a stopped process). Slows the process to a crawl meanwhile,
 * which is what makes a fast copy observable mid-way.
 */
export async function freezeWhen<T>(
  pid: number,
  check: () => Promise<T | undefined | false> | T | undefined | false,
  options: { runMs?: number; timeoutMs?: number } = {},
): Promise<T> {
  const deadline = Date.now() + (options.timeoutMs ?? 60_000);
  for (;;) {
    process.kill(pid, 'SIGSTOP');
    await waitStopped(pid);
    const value = await check();
    if (value) return value;
    if (!isAlive(pid)) throw new Error(`process ${pid} exited before the awaited state`);
    process.kill(pid, 'SIGCONT');
    if (Date.now() > deadline) throw new Error('the awaited state did not occur in time');
    await sleep(options.runMs ?? 3);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Files

/** Every file under `dir` (relative path → sha256), temp files included. */
export async function hashTree(dir: string): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  async function walk(d: string): Promise<void> {
    let entries: import('node:fs').Dirent[];
    try {
      entries = await readdir(d, { withFileTypes: true });
    } catch {
      return;
    }
    for (const entry of entries) {
      const full = path.join(d, entry.name);
      if (entry.isDirectory()) await walk(full);
      else if (entry.isFile()) out.set(path.relative(dir, full), (await hashFile(full)).sha256);
    }
  }
  await walk(dir);
  return out;
}

/** Temp files (`.tmp-…`) anywhere under `dir`. */
export async function tempFilesUnder(dir: string): Promise<string[]> {
  return [...(await hashTree(dir)).keys()].filter((rel) => path.basename(rel).startsWith(TEMP_PREFIX));
}

/** Size of the largest temp file directly in `dir` (0 when there is none). */
export async function largestTempFile(dir: string): Promise<number> {
  let largest = 0;
  for (const name of await readdir(dir).catch(() => [] as string[])) {
    if (!name.startsWith(TEMP_PREFIX)) continue;
    const s = await stat(path.join(dir, name)).catch(() => undefined);
    if (s && s.size > largest) largest = s.size;
  }
  return largest;
}

/** Writes one file of `bytes` (incompressible) so that about `leaveBytes` stay free on `dir`'s filesystem. */
export async function fillLeaving(dir: string, leaveBytes: number): Promise<number> {
  const fs = await statfs(dir);
  const free = fs.bavail * fs.bsize;
  const bytes = Math.max(0, free - leaveBytes);
  const out = createWriteStream(path.join(dir, 'filler.bin'));
  const block = randomBytes(1024 * 1024);
  for (let written = 0; written < bytes; ) {
    const n = Math.min(block.length, bytes - written);
    if (!out.write(block.subarray(0, n))) await new Promise<void>((r) => out.once('drain', () => r()));
    written += n;
  }
  await new Promise<void>((resolve, reject) => out.end((e?: Error | null) => (e ? reject(e) : resolve())));
  return bytes;
}

// ---------------------------------------------------------------------------------------------------------
// Small filesystems

export interface SmallFs {
  dir: string;
  kind: 'tmpfs' | 'ext4-loop';
  unmount(): Promise<void>;
}

/**
 * Mounts a filesystem of `sizeMb` on `dir`: tmpfs, or (where tmpfs mounts are refused) an ext4 image on
 * a loop device. Throws with both reasons when neither can be mounted here.
 */
export async function mountSmallFs(dir: string, sizeMb: number): Promise<SmallFs> {
  await mkdir(dir, { recursive: true });
  const tmpfs = await execa('mount', ['-t', 'tmpfs', '-o', `size=${sizeMb}m,mode=0755`, 'tmpfs', dir], {
    reject: false,
  });
  const unmount = async () => {
    // Lazily when something still holds it open (the mount goes as soon as it is released).
    if ((await execa('umount', [dir], { reject: false })).exitCode !== 0)
      await execa('umount', ['-l', dir], { reject: false });
  };
  if (tmpfs.exitCode === 0) return { dir, kind: 'tmpfs', unmount };
  const image = `${dir}.img`;
  const steps: Array<[string, string[]]> = [
    ['truncate', ['-s', `${sizeMb}M`, image]],
    ['mkfs.ext4', ['-q', '-F', image]],
    ['mount', ['-o', 'loop', image, dir]],
  ];
  for (const [cmd, args] of steps) {
    const r = await execa(cmd, args, { reject: false });
    if (r.exitCode !== 0) {
      await rm(image, { force: true });
      throw new Error(
        `no small filesystem can be mounted here: tmpfs: ${String(tmpfs.stderr).trim()}; loop ext4 (${cmd}): ${String(r.stderr).trim()}`,
      );
    }
  }
  return {
    dir,
    kind: 'ext4-loop',
    async unmount() {
      await unmount();
      await rm(image, { force: true });
    },
  };
}

// ---------------------------------------------------------------------------------------------------------
// A throttled pg_dump

export interface ThrottledPgDump {
  /** Put first on PATH. */
  binDir: string;
  /** pg_dump's output is throttled while on (the default), straight through while off. */
  setThrottled(on: boolean): Promise<void>;
}

/**
 * A `pg_dump` wrapper: with the switch file present it pipes the real pg_dump through a small perl loop
 * into the `--file` the function asked for
 * that passes `chunkBytes` every `delayMs` (pv is not installed here), so a dump is genuinely streaming
 * for as long as a test needs; exit status via pipefail. `--version` and the unthrottled mode exec the
 * real binary, so the tool check sees the real version.
 */
export async function throttledPgDump(
  dir: string,
  options: { chunkBytes?: number; delayMs?: number } = {},
): Promise<ThrottledPgDump> {
  const real = pgBinPath('pg_dump');
  if (!path.isAbsolute(real)) throw new Error('pg_dump is not on PATH');
  const binDir = path.join(dir, 'throttled-bin');
  await mkdir(binDir, { recursive: true });
  const switchFile = path.join(binDir, 'throttle-on');
  const chunk = options.chunkBytes ?? 16 * 1024;
  const delay = (options.delayMs ?? 25) / 1000;
  const script = `#!/bin/bash
# test wrapper: the real pg_dump, its output throttled while ${switchFile} exists
REAL=${JSON.stringify(real)}
if [ ! -e ${JSON.stringify(switchFile)} ]; then exec "$REAL" "$@"; fi
for a in "$@"; do case "$a" in --version|-V) exec "$REAL" "$@";; esac; done
set -o pipefail
# The function asks for --file=<temp>: the real pg_dump writes to the pipe instead, the loop fills the file.
args=(); out=/dev/stdout
for a in "$@"; do case "$a" in --file=*) out="\${a#--file=}";; *) args+=("$a");; esac; done
"$REAL" "\${args[@]}" | perl -e 'binmode STDIN; binmode STDOUT; while (sysread(STDIN, my $b, ${chunk})) { defined(syswrite(STDOUT, $b)) or exit 1; select(undef, undef, undef, ${delay}); }' > "$out"
`;
  const file = path.join(binDir, 'pg_dump');
  await writeFile(file, script);
  await chmod(file, 0o755);
  await writeFile(switchFile, '');
  return {
    binDir,
    async setThrottled(on) {
      if (on) await writeFile(switchFile, '');
      else await rm(switchFile, { force: true });
    },
  };
}

// ---------------------------------------------------------------------------------------------------------
// An event sink with receiver-side dedupe that can be switched down

export interface DedupeSink {
  url: string;
  /** Answer every delivery with `status` (e.g. 503) until set back to undefined. */
  setDown(status: number | undefined): void;
  /** webhook-ids answered with the down status, and how often. */
  refused: Map<string, number>;
  /** Verified events, first delivery per webhook-id. */
  accepted: Map<string, CloudEvent>;
  /** Deliveries of an id already accepted (at-least-once; acknowledged and dropped). */
  duplicates: number;
  /** Deliveries whose signature did not verify. */
  unverified: number;
  events(type?: string): CloudEvent[];
  close(): Promise<void>;
}

export async function startDedupeSink(): Promise<DedupeSink> {
  let down: number | undefined;
  const refused = new Map<string, number>();
  const accepted = new Map<string, CloudEvent>();
  const sink = { duplicates: 0, unverified: 0 };
  const server = createServer(async (req, res) => {
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    const body = Buffer.concat(chunks).toString('utf8');
    const id = String(req.headers['webhook-id'] ?? '');
    if (down !== undefined) {
      refused.set(id, (refused.get(id) ?? 0) + 1);
      res.writeHead(down).end('down on purpose');
      return;
    }
    const headers = Object.fromEntries(Object.entries(req.headers).map(([k, v]) => [k, String(v)]));
    const verified = verifyWebhook([WEBHOOK_SECRET], { get: (n) => headers[n.toLowerCase()] }, body, {
      toleranceMs: 300_000,
    });
    if (!verified.ok) {
      sink.unverified += 1;
      res.writeHead(401).end();
      return;
    }
    if (accepted.has(id)) sink.duplicates += 1;
    else accepted.set(id, JSON.parse(body) as CloudEvent);
    res.writeHead(202, { 'content-type': 'application/json' }).end('{"ok":true}');
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}/events`,
    setDown(status) {
      down = status;
    },
    refused,
    accepted,
    get duplicates() {
      return sink.duplicates;
    },
    get unverified() {
      return sink.unverified;
    },
    events: (type) => [...accepted.values()].filter((e) => !type || e.type === type),
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

// ---------------------------------------------------------------------------------------------------------
// Docker

/** Whether the default engine answers and has `image` (the docker tests run only then). */
/**
 * The environment the fault suites start their function processes with: the throttled pg_dump first on
 * PATH, every event to the dedupe sink, quick outbox retries, no verification triggered by events and no
 * periodic reconcile (each test triggers what it needs). `extra` adds or overrides.
 */
export function faultsEnv(
  testEnv: NodeJS.ProcessEnv,
  throttle: ThrottledPgDump,
  sink: DedupeSink,
  extra: Record<string, string>,
): NodeJS.ProcessEnv {
  return {
    ...testEnv,
    PATH: `${throttle.binDir}:${testEnv.PATH}`,
    FLUX_LOG_LEVEL: 'info',
    FLUX_EVENT_SINKS: JSON.stringify([{ url: sink.url, types: ['*'] }]),
    FLUX_OUTBOX_RETRY_SCHEDULE_MS: [0, 100, 200, ...Array(9).fill(400)].join(','),
    FLUX_VERIFY_ON: 'none',
    FLUX_REPLICATE_RECONCILE_INTERVAL_MS: String(60 * 60 * 1000),
    ...extra,
  };
}

/** Ids of containers (running or not) carrying every given label (`key=value`). */
export async function containersLabelled(
  labels: string[],
  host?: string,
  namePrefix?: string,
): Promise<string[]> {
  const r = await execa(
    'docker',
    [
      ...(host ? ['-H', host] : []),
      'ps',
      '-aq',
      '--no-trunc',
      ...labels.flatMap((l) => ['--filter', `label=${l}`]),
      ...(namePrefix ? ['--filter', `name=^/${namePrefix}`] : []),
    ],
    { reject: false, timeout: 20_000 },
  );
  if (r.exitCode !== 0) throw new Error(`docker ps failed: ${r.stderr}`);
  return String(r.stdout).split('\n').filter(Boolean);
}

/** The containerd shim of a container (docker exec'd processes are its children). */
export function shimOf(containerId: string): ProcInfo | undefined {
  return listProcesses().find(
    (p) => p.argv[0]?.includes('containerd-shim') && p.argv.includes(containerId) && p.state !== 'Z',
  );
}

export interface SecondEngine {
  /** `unix://…` for docker -H. */
  host: string;
  socket: string;
  dir: string;
  pid: number;
  /** SIGKILLs dockerd and its containerd (containers keep running under their shims). */
  kill(): Promise<void>;
  /** Kills whatever is left (shims, container processes), unmounts and removes the dirs. */
  cleanup(): Promise<void>;
}

/**
 * A second Docker engine on its own socket, data-root, exec-root and pidfile (vfs, no iptables, no
 * bridge), with `image` loaded from the default engine. Throws with dockerd's own words when it cannot
 * run here.
 */
export async function startSecondEngine(image: string): Promise<SecondEngine> {
  // A short path: unix socket paths are limited to 108 bytes.
  const dir = await mkdtemp(path.join('/tmp', 'fxd-'));
  const socket = path.join(dir, 'docker.sock');
  const host = `unix://${socket}`;
  await mkdir(path.join(dir, 'data'));
  await mkdir(path.join(dir, 'exec'));
  const logFile = path.join(dir, 'dockerd.log');
  const log = createWriteStream(logFile);
  await new Promise((resolve) => log.once('open', resolve));
  const child = spawn(
    'dockerd',
    [
      '--iptables=false',
      '--bridge=none',
      '--storage-driver=vfs',
      '-H',
      host,
      '--data-root',
      path.join(dir, 'data'),
      '--exec-root',
      path.join(dir, 'exec'),
      '--pidfile',
      path.join(dir, 'docker.pid'),
    ],
    { stdio: ['ignore', log, log], detached: true },
  );
  child.unref();
  const pid = child.pid!;
  const engine: SecondEngine = {
    host,
    socket,
    dir,
    pid,
    async kill() {
      const procs = listProcesses();
      const containerd = procs.filter((p) => p.ppid === pid && p.argv[0]?.includes('containerd'));
      for (const p of [{ pid }, ...containerd]) {
        try {
          process.kill(p.pid, 'SIGKILL');
        } catch {
          // gone
        }
      }
      await eventually(() => [pid, ...containerd.map((p) => p.pid)].every((p) => !isAlive(p)), 20_000, 20);
    },
    async cleanup() {
      await engine.kill().catch(() => undefined);
      // Shims (and the container processes under them) outlive a killed engine.
      const procs = listProcesses();
      const shims = procs.filter((p) => p.argv.some((a) => a.includes(dir)));
      const doomed = [...shims.flatMap((s) => descendantsOf(s.pid, procs)), ...shims];
      for (const p of doomed) {
        try {
          process.kill(p.pid, 'SIGCONT');
          process.kill(p.pid, 'SIGKILL');
        } catch {
          // gone
        }
      }
      await eventually(() => doomed.every((p) => !isAlive(p.pid)), 20_000, 20).catch(() => undefined);
      const mounts = readFileSync('/proc/mounts', 'utf8')
        .split('\n')
        .map((l) => l.split(' ')[1] ?? '')
        .filter((m) => m.startsWith(dir))
        .sort()
        .reverse();
      for (const m of mounts) await execa('umount', ['-l', m], { reject: false });
      await rm(dir, { recursive: true, force: true, maxRetries: 3 });
    },
  };
  try {
    await eventually(
      async () => {
        if (!isAlive(pid)) throw new Error(`dockerd exited: ${readFileSync(logFile, 'utf8').slice(-2000)}`);
        return (await execa('docker', ['-H', host, 'version'], { reject: false })).exitCode === 0;
      },
      30_000,
      100,
    );
    const loaded = await execa('sh', ['-c', `docker save '${image}' | docker -H '${host}' load`], {
      reject: false,
    });
    if (loaded.exitCode !== 0)
      throw new Error(`loading ${image} into the second engine failed: ${loaded.stderr}`);
  } catch (error) {
    await engine.cleanup();
    throw error;
  }
  return engine;
}

// ---------------------------------------------------------------------------------------------------------
// Registry

export interface ProjectsFile {
  clusters?: Array<{ name: string; url: string; maxConcurrentDumps?: number }>;
  projects: Array<Record<string, unknown>>;
}

export async function writeProjectsFile(file: string, registry: ProjectsFile): Promise<void> {
  await mkdir(path.dirname(file), { recursive: true });
  await writeFile(file, JSON.stringify({ clusters: registry.clusters ?? [], projects: registry.projects }));
}
