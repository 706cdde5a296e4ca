// What every benchmark module shares: the cleanup stack (run in reverse, also on Ctrl-C), function
// processes started the way an operator runs them (built JavaScript, or the sources through tsx), their
// peak RSS and CPU time read from /proc, page-cache dropping, and file-arrival timing.
import { execFileSync } from 'node:child_process';
import { type FSWatcher, watch } from 'node:fs';
import { access, readFile, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { execa, type ResultPromise } from 'execa';
import { NODE_FLAGS } from '../shared/kit/node-flags.js';

export const ROOT = path.resolve(import.meta.dirname, '..');
export const MB = 1024 * 1024;
export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

// ---------------------------------------------------------------------------------------------------------
// Cleanup: every resource registers how to release it; released in reverse order at the end of its
// module, at the end of the run, or on SIGINT/SIGTERM.

type Release = () => Promise<void> | void;
interface Entry {
  label: string;
  /** Runs the release once; every later call gets the same promise. */
  run: () => Promise<void>;
}
const releases: Entry[] = [];
let closing = false;

function once(release: Release): () => Promise<void> {
  let done: Promise<void> | undefined;
  return () => {
    done ??= Promise.resolve().then(release);
    return done;
  };
}

/**
 * Registers `release`; the returned function releases it now (once) and unregisters it. Once the run is
 * being cleaned up (Ctrl-C while a module still runs), whatever registers late is released at once.
 */
export function defer(label: string, release: Release): () => Promise<void> {
  const entry: Entry = { label, run: once(release) };
  if (closing) {
    void entry.run().catch(() => undefined);
    return entry.run;
  }
  releases.push(entry);
  return () => {
    const i = releases.indexOf(entry);
    if (i >= 0) releases.splice(i, 1);
    return entry.run();
  };
}

/** Releases everything still registered, newest first; failures are reported, never thrown. */
export async function releaseAll(say: (line: string) => void = () => undefined): Promise<void> {
  closing = true;
  while (releases.length > 0) {
    const entry = releases.pop()!;
    try {
      await entry.run();
    } catch (error) {
      say(`cleanup of ${entry.label} failed: ${(error as Error).message}`);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// /proc readings

/** Peak (VmHWM) and current (VmRSS) resident set size of `pid`, in bytes. */
export async function memoryOf(pid: number): Promise<{ peak: number; rss: number }> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const kb = (field: string) => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN);
  return { peak: kb('VmHWM') * 1024, rss: kb('VmRSS') * 1024 };
}

/**
 * Resets the peak RSS of `pid` to its current RSS (`5` to /proc/<pid>/clear_refs, Linux >= 4.0), so the
 * next reading is the peak of what ran in between. False when the kernel refuses.
 */
export async function resetPeak(pid: number): Promise<boolean> {
  try {
    await writeFile(`/proc/${pid}/clear_refs`, '5');
    return true;
  } catch {
    return false;
  }
}

let clockTicks: number | undefined;

/** Two of `pid`'s proc(5) stat fields, summed, as seconds: after "pid (comm) " state is field 0, utime 11, stime 12, cutime 13, cstime 14. */
async function statSeconds(pid: number, a: number, b: number): Promise<number> {
  clockTicks ??= Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[a]) + Number(fields[b])) / clockTicks;
}

/** User + system CPU seconds `pid` has used (its own threads, not its children). */
export async function cpuSecondsOf(pid: number): Promise<number> {
  return statSeconds(pid, 11, 12);
}

/**
 * User + system CPU seconds of the children `pid` has waited for, and through their own waits of theirs:
 * every tool it ran, and a sandbox's server with its backends once that server has been reaped.
 */
export async function childrenCpuSecondsOf(pid: number): Promise<number> {
  return statSeconds(pid, 13, 14);
}

/**
 * CPU seconds the whole machine has been busy since boot (every process: a function's children, the
 * clusters' backends, the sandboxes' servers), from /proc/stat; the difference over a run is its cost.
 */
export async function machineBusySeconds(): Promise<number> {
  clockTicks ??= Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
  const line = (await readFile('/proc/stat', 'utf8')).split('\n')[0]!;
  // cpu user nice system idle iowait irq softirq steal ...: everything but idle and iowait is busy.
  const [user, nice, system, , , irq, softirq, steal] = line.trim().split(/\s+/).slice(1).map(Number);
  return (
    ((user ?? 0) + (nice ?? 0) + (system ?? 0) + (irq ?? 0) + (softirq ?? 0) + (steal ?? 0)) / clockTicks
  );
}

let cachesDroppable: boolean | undefined;

/** Writes dirty pages and drops the page cache (root with a writable /proc/sys); false when not allowed. */
export async function dropCaches(): Promise<boolean> {
  if (cachesDroppable === false) return false;
  try {
    execFileSync('sync');
    await writeFile('/proc/sys/vm/drop_caches', '3');
    cachesDroppable = true;
  } catch {
    cachesDroppable = false;
  }
  return cachesDroppable;
}

// ---------------------------------------------------------------------------------------------------------
// Function processes

export interface FunctionProcess {
  name: string;
  /** PID of the node process itself (not a wrapper): its /proc entries are the function's. */
  pid: number;
  url: string;
  output(): string;
  /** SIGTERM, then SIGKILL after 10 s; resolves when the process is gone. Idempotent. */
  stop(): Promise<void>;
}

export interface StartFunctionOptions {
  /** `dump`, `replicate`, … or `all`: runs functions/<main>/main.ts. */
  main: string;
  env: NodeJS.ProcessEnv;
  /** Port the process listens on (already in `env` under its variable). */
  port: number;
  /** Wait for /readyz to answer 200 (default: /healthz). */
  ready?: boolean;
  timeoutMs?: number;
}

const OUTPUT_TAIL = 20_000;
const STOP_GRACE_MS = 10_000;

/** How function processes run: the sources through tsx, or JavaScript built once for this run. */
export type Runner = { kind: 'tsx' } | { kind: 'built'; dir: string };
let runner: Runner = { kind: 'tsx' };

export function runnerDescription(): string {
  return runner.kind === 'tsx'
    ? 'node --import tsx functions/<name>/main.ts'
    : 'node dist/functions/<name>/main.js (npm run build output, compiled for this run)';
}

/**
 * Compiles functions/ and shared/ with tsconfig.build.json into `<root>/dist` (what `npm run build`
 * produces, and what production runs), so RSS is the function's own and not tsx's in-process compiler.
 * Resolves packages through a `<root>/node_modules` link to the checkout's.
 */
export async function useBuiltRunner(root: string): Promise<void> {
  const dir = path.join(root, 'dist');
  const tsc = path.join(ROOT, 'node_modules', '.bin', 'tsc');
  const result = await execa(tsc, ['-p', 'tsconfig.build.json', '--outDir', dir], {
    cwd: ROOT,
    reject: false,
  });
  if (result.exitCode !== 0) {
    throw new Error(
      `building the functions failed (exit ${result.exitCode}): ${String(result.stdout).slice(-2000)}`,
    );
  }
  await symlink(path.join(ROOT, 'node_modules'), path.join(root, 'node_modules'), 'dir');
  runner = { kind: 'built', dir };
}

/** Starts the function (`main`) the configured way and waits until it answers. */
export async function startFunction(options: StartFunctionOptions): Promise<FunctionProcess> {
  // Node's own flags for the function, e.g. BENCH_NODE_ARGS='--cpu-prof --cpu-prof-dir=/tmp/prof' (Node
  // refuses --cpu-prof in NODE_OPTIONS).
  // After the flags every deployment starts a function with (NODE_FLAGS), so these can override them.
  const nodeArgs = [...NODE_FLAGS, ...(process.env.BENCH_NODE_ARGS ?? '').split(' ').filter(Boolean)];
  const args =
    runner.kind === 'tsx'
      ? [...nodeArgs, '--import', 'tsx', path.join('functions', options.main, 'main.ts')]
      : [...nodeArgs, path.join(runner.dir, 'functions', options.main, 'main.js')];
  const child: ResultPromise = execa(process.execPath, args, {
    cwd: ROOT,
    env: options.env,
    extendEnv: false,
    stdin: 'ignore',
    stdout: 'pipe',
    stderr: 'pipe',
    buffer: false,
    reject: false,
    // On our own exit (Ctrl-C included) the child is killed too.
    cleanup: true,
  });
  let output = '';
  const keep = (chunk: Buffer) => {
    output = (output + chunk.toString()).slice(-OUTPUT_TAIL);
  };
  child.stdout?.on('data', keep);
  child.stderr?.on('data', keep);
  let exited = false;
  const gone = child.then(
    () => {
      exited = true;
    },
    () => {
      exited = true;
    },
  );
  const pid = child.pid;
  if (pid === undefined) throw new Error(`could not start functions/${options.main}/main.ts`);
  const release = defer(`${options.main} process ${pid}`, async () => {
    if (exited) return;
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), STOP_GRACE_MS);
    await gone;
    clearTimeout(timer);
  });
  const url = `http://127.0.0.1:${options.port}`;
  const deadline = Date.now() + (options.timeoutMs ?? 90_000);
  const probePath = options.ready ? '/readyz' : '/healthz';
  for (;;) {
    if (exited) {
      await release();
      throw new Error(`functions/${options.main}/main.ts exited during start-up:\n${output.slice(-3000)}`);
    }
    const ok = await fetch(`${url}${probePath}`)
      .then((r) => r.ok)
      .catch(() => false);
    if (ok) break;
    if (Date.now() > deadline) {
      await release();
      throw new Error(
        `functions/${options.main}/main.ts did not answer ${probePath}:\n${output.slice(-3000)}`,
      );
    }
    await sleep(100);
  }
  return { name: options.main, pid, url, output: () => output, stop: () => release() };
}

// ---------------------------------------------------------------------------------------------------------
// File arrival timing

/**
 * Watches one directory and records when each file name matching `accept` first appears
 * (performance.now() milliseconds). `fs.watch` gives the time; `waitFor` also checks the disk, so a
 * dropped notification costs resolution, never a hang.
 */
export class ArrivalClock {
  readonly seen = new Map<string, number>();
  readonly #watcher: FSWatcher;
  readonly #dir: string;
  readonly #waiters = new Map<string, () => void>();

  constructor(dir: string, accept: (name: string) => boolean) {
    this.#dir = dir;
    this.#watcher = watch(dir, { persistent: false }, (_type, filename) => {
      if (filename === null) return;
      const name = filename.toString();
      if (!accept(name) || this.seen.has(name)) return;
      this.seen.set(name, performance.now());
      this.#waiters.get(name)?.();
    });
  }

  /** Resolves with the arrival time of `name` (rejects after `timeoutMs`). */
  async waitFor(name: string, timeoutMs: number): Promise<number> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const at = this.seen.get(name);
      if (at !== undefined) return at;
      const arrived = await access(path.join(this.#dir, name)).then(
        () => true,
        () => false,
      );
      if (arrived) {
        // Missed by the watch: now is an upper bound of the arrival time.
        const now = performance.now();
        if (!this.seen.has(name)) this.seen.set(name, now);
        return this.seen.get(name)!;
      }
      if (Date.now() > deadline)
        throw new Error(`${name} did not appear in ${this.#dir} within ${timeoutMs} ms`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, 200);
        this.#waiters.set(name, () => {
          clearTimeout(timer);
          resolve();
        });
      });
      this.#waiters.delete(name);
    }
  }

  close(): void {
    this.#watcher.close();
  }
}

/** Wall seconds of `fn`. */
export async function seconds(fn: () => Promise<unknown>): Promise<number> {
  const started = performance.now();
  await fn();
  return (performance.now() - started) / 1000;
}
