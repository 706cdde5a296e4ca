// replicate: a large backup arriving in the local catalog (dump, then its manifest renamed into place)
// through the running replicate process until its receipt lands, against `cp` then `sha256sum` of the
// same file; then arrival -> replicated latency of many small backups, one at a time and all at once.
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { link, mkdir, open, readFile, rename, rm } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { fsyncDir, tempPathFor, writeFileAtomic } from '../shared/atomic.js';
import { newBackupId } from '../shared/catalog/ids.js';
import { backupPaths } from '../shared/catalog/layout.js';
import type { OffsiteReceipt } from '../shared/catalog/records.js';
import { fakeManifest } from '../test/replicate-fixtures.js';
import { freePort } from '../test/support/pg.js';
import { type BenchContext, writeRegistry } from './context.js';
import { alternate, summarize } from './stats.js';
import { ArrivalClock, dropCaches, MB, memoryOf, resetPeak, startFunction } from './support.js';

const RECEIPT = '.offsite.json';
const LARGE_TIMEOUT_MS = 30 * 60_000;
const SMALL_TIMEOUT_MS = 60_000;

/** Writes a manifest the way dump does (temp, fsync, rename, fsync dir); returns when it arrived. */
async function arrive(file: string, manifest: unknown): Promise<number> {
  const tmp = tempPathFor(file);
  const handle = await open(tmp, 'wx', 0o640);
  try {
    await handle.writeFile(`${JSON.stringify(manifest, null, 2)}\n`);
    await handle.sync();
  } finally {
    await handle.close();
  }
  const at = performance.now();
  await rename(tmp, file);
  await fsyncDir(path.dirname(file));
  return at;
}

/** `size` bytes of random data in 1 MiB blocks (never held whole), and their SHA-256. */
async function writeRandomFile(file: string, size: number): Promise<string> {
  const hash = createHash('sha256');
  const out = createWriteStream(file);
  for (let written = 0; written < size; ) {
    const chunk = randomBytes(Math.min(MB, size - written));
    hash.update(chunk);
    written += chunk.length;
    if (!out.write(chunk)) await new Promise<void>((resolve) => out.once('drain', () => resolve()));
  }
  await new Promise<void>((resolve, reject) => out.end((e?: Error | null) => (e ? reject(e) : resolve())));
  return hash.digest('hex');
}

async function readReceipt(file: string): Promise<OffsiteReceipt> {
  return JSON.parse(await readFile(file, 'utf8')) as OffsiteReceipt;
}

export async function benchReplicate(ctx: BenchContext): Promise<void> {
  const { options } = ctx;
  const dirs = await ctx.dirs('replicate');
  await writeRegistry(dirs.projects, { projects: [] });
  const large = randomUUID();
  const single = randomUUID();
  const burst = randomUUID();
  // Project directories exist before the process starts, so each is watched from its first arrival.
  for (const p of [large, single, burst]) await mkdir(path.join(dirs.local, p), { recursive: true });

  const size = options.replicateMb * MB;
  const sourceFile = path.join(dirs.base, 'large.bin');
  ctx.say(`replicate: writing a ${options.replicateMb} MiB backup of random bytes`);
  const sha256 = await writeRandomFile(sourceFile, size);

  const port = await freePort();
  const proc = await startFunction({
    main: 'replicate',
    port,
    ready: true,
    env: ctx.env(dirs, {
      FLUX_REPLICATE_PORT: String(port),
      // Only arrivals trigger copies here: the periodic reconcile is out of the way.
      FLUX_REPLICATE_RECONCILE_INTERVAL_MS: String(60 * 60_000),
    }),
  });
  const clocks: ArrivalClock[] = [];
  const accept = (name: string) => name.endsWith(RECEIPT) && !name.startsWith('.');
  try {
    const clock = new ArrivalClock(path.join(dirs.local, large), accept);
    clocks.push(clock);
    const cachesDropped = await dropCaches();
    const peaks: number[] = [];
    const lags: number[] = [];

    const viaReplicate = async () => {
      const backupId = newBackupId();
      const paths = backupPaths(dirs.local, large, backupId);
      // The same bytes under a new backup id: offsite objects are immutable, every run is a new copy.
      await link(sourceFile, paths.dump);
      await dropCaches();
      await resetPeak(proc.pid);
      const arrived = await arrive(
        paths.manifest,
        fakeManifest(large, backupId, { sizeBytes: size, sha256 }),
      );
      const done = await clock.waitFor(`${backupId}${RECEIPT}`, LARGE_TIMEOUT_MS);
      const elapsed = (done - arrived) / 1000;
      peaks.push((await memoryOf(proc.pid)).peak / MB);
      const receipt = await readReceipt(paths.offsite);
      if (receipt.status !== 'replicated')
        throw new Error(`replicate wrote a ${receipt.status} receipt: ${receipt.error}`);
      if (receipt.lagSeconds !== undefined) lags.push(receipt.lagSeconds);
      const offsite = backupPaths(dirs.offsite, large, backupId);
      for (const file of [offsite.dump, offsite.manifest, paths.dump, paths.manifest, paths.offsite]) {
        await rm(file, { force: true });
      }
      return options.replicateMb / elapsed;
    };
    const copyFile = path.join(dirs.offsite, 'baseline.bin');
    const cpSha = async () => {
      await dropCaches();
      const started = performance.now();
      await execa('cp', [sourceFile, copyFile]);
      const sum = await execa('sha256sum', [copyFile]);
      const elapsed = (performance.now() - started) / 1000;
      if (!String(sum.stdout).startsWith(sha256))
        throw new Error('sha256sum of the copy differs from the source');
      await rm(copyFile, { force: true });
      return options.replicateMb / elapsed;
    };
    ctx.say(`replicate: ${options.replicateMb} MiB backup, ${options.rounds} alternating rounds`);
    const runs = await alternate(
      options.rounds,
      { fn: viaReplicate, base: cpSha },
      { warmup: options.warmup },
    );
    await benchSealed(ctx, sourceFile, sha256, size);
    await rm(sourceFile, { force: true });
    ctx.record({
      id: 'replicate.large',
      group: 'replicate',
      name: `replicate ${options.replicateMb >= 1024 ? `${options.replicateMb / 1024} GiB` : `${options.replicateMb} MiB`} backup, arrival -> receipt`,
      unit: 'MiB/s',
      fn: summarize(runs.fn),
      baseline: { ...summarize(runs.base), label: 'cp + sha256sum' },
      goals: [{ of: 'ratio', op: '>=', value: 0.8 }],
      peakRssMb: Math.max(...peaks.slice(-options.rounds)),
      details: {
        sizeBytes: size,
        pageCachesDropped: cachesDropped,
        functionLagSecondsMedian: lags.length > 0 ? summarize(lags.slice(-options.rounds)).median : undefined,
      },
      note: 'throughput: higher is better; ratio = function / baseline',
    });

    // Small backups, one at a time: the latency of an idle replicate noticing and proving one arrival.
    const n = options.smallBackups;
    const singleClock = new ArrivalClock(path.join(dirs.local, single), accept);
    clocks.push(singleClock);
    ctx.say(`replicate: ${n} small backups one at a time, then ${n} at once`);
    const one: number[] = [];
    await resetPeak(proc.pid);
    for (let i = 0; i < n; i++) {
      const backupId = newBackupId();
      const paths = backupPaths(dirs.local, single, backupId);
      const bytes = randomBytes(512 + Math.floor(Math.random() * 3584));
      await writeFileAtomic(paths.dump, bytes);
      const arrived = await arrive(
        paths.manifest,
        fakeManifest(single, backupId, {
          sizeBytes: bytes.length,
          sha256: createHash('sha256').update(bytes).digest('hex'),
        }),
      );
      one.push((await singleClock.waitFor(`${backupId}${RECEIPT}`, SMALL_TIMEOUT_MS)) - arrived);
    }
    const onePeak = (await memoryOf(proc.pid)).peak / MB;
    ctx.record({
      id: 'replicate.small.sequential',
      group: 'replicate',
      name: `replicate latency, ${n} small backups one at a time`,
      unit: 'ms',
      fn: summarize(one),
      peakRssMb: onePeak,
      details: { latency: true },
    });

    // All at once: every dump first (ignored without a manifest), then every manifest as fast as we can.
    const burstClock = new ArrivalClock(path.join(dirs.local, burst), accept);
    clocks.push(burstClock);
    const pending: Array<{ backupId: string; manifest: unknown; file: string }> = [];
    for (let i = 0; i < n; i++) {
      const backupId = newBackupId();
      const paths = backupPaths(dirs.local, burst, backupId);
      const bytes = randomBytes(512 + Math.floor(Math.random() * 3584));
      await writeFileAtomic(paths.dump, bytes);
      pending.push({
        backupId,
        file: paths.manifest,
        manifest: fakeManifest(burst, backupId, {
          sizeBytes: bytes.length,
          sha256: createHash('sha256').update(bytes).digest('hex'),
        }),
      });
    }
    await resetPeak(proc.pid);
    const arrivals: number[] = [];
    for (const p of pending) arrivals.push(await arrive(p.file, p.manifest));
    const done: number[] = [];
    for (const p of pending)
      done.push(await burstClock.waitFor(`${p.backupId}${RECEIPT}`, SMALL_TIMEOUT_MS * 5));
    const latencies = done.map((t, i) => t - arrivals[i]!);
    const drainSeconds = (Math.max(...done) - arrivals[0]!) / 1000;
    const burstPeak = (await memoryOf(proc.pid)).peak / MB;
    let replicated = 0;
    for (const p of pending) {
      const receipt = await readReceipt(backupPaths(dirs.local, burst, p.backupId).offsite);
      if (receipt.status === 'replicated') replicated += 1;
    }
    if (replicated !== n) throw new Error(`burst: ${replicated} of ${n} backups replicated`);
    ctx.record({
      id: 'replicate.small.burst',
      group: 'replicate',
      name: `replicate latency, ${n} small backups at once`,
      unit: 'ms',
      fn: summarize(latencies),
      peakRssMb: burstPeak,
      details: {
        latency: true,
        drainSeconds,
        backupsPerSecond: n / drainSeconds,
        arrivalSeconds: (arrivals.at(-1)! - arrivals[0]!) / 1000,
      },
      note: `all ${n} replicated in ${drainSeconds.toFixed(1)} s (${(n / drainSeconds).toFixed(0)} backups/s)`,
    });
    if (!cachesDropped) {
      ctx.note(
        'replicate: page caches could not be dropped; function and cp + sha256sum both read a warm file',
      );
    }
  } finally {
    for (const clock of clocks) clock.close();
    await proc.stop();
  }
}

/**
 * The same large backup through a replicate that encrypts offsite copies (FLUX_BACKUP_AGE_RECIPIENTS),
 * against the age CLI encrypting the file to the store, then sha256sum of the result.
 */
async function benchSealed(
  ctx: BenchContext,
  sourceFile: string,
  sha256: string,
  size: number,
): Promise<void> {
  const { options } = ctx;
  const dirs = await ctx.dirs('replicate-age');
  await writeRegistry(dirs.projects, { projects: [] });
  const project = randomUUID();
  await mkdir(path.join(dirs.local, project), { recursive: true });
  const keygen = await execa('age-keygen', ['-o', path.join(dirs.base, 'age.key')]);
  const recipient = /Public key: (age1\S+)/.exec(String(keygen.stderr))?.[1];
  if (!recipient) throw new Error('age-keygen printed no public key');
  const port = await freePort();
  const proc = await startFunction({
    main: 'replicate',
    port,
    ready: true,
    env: ctx.env(dirs, {
      FLUX_REPLICATE_PORT: String(port),
      FLUX_REPLICATE_RECONCILE_INTERVAL_MS: String(60 * 60_000),
      FLUX_BACKUP_AGE_RECIPIENTS: recipient,
    }),
  });
  const clock = new ArrivalClock(
    path.join(dirs.local, project),
    (name) => name.endsWith(RECEIPT) && !name.startsWith('.'),
  );
  try {
    const peaks: number[] = [];
    const viaReplicate = async () => {
      const backupId = newBackupId();
      const paths = backupPaths(dirs.local, project, backupId);
      await link(sourceFile, paths.dump);
      await dropCaches();
      await resetPeak(proc.pid);
      const arrived = await arrive(
        paths.manifest,
        fakeManifest(project, backupId, { sizeBytes: size, sha256 }),
      );
      const done = await clock.waitFor(`${backupId}${RECEIPT}`, LARGE_TIMEOUT_MS);
      const elapsed = (done - arrived) / 1000;
      peaks.push((await memoryOf(proc.pid)).peak / MB);
      const receipt = await readReceipt(paths.offsite);
      if (receipt.status !== 'replicated' || !receipt.encryption)
        throw new Error(`replicate wrote a ${receipt.status} receipt without encryption: ${receipt.error}`);
      const offsite = backupPaths(dirs.offsite, project, backupId);
      for (const file of [offsite.dump, offsite.manifest, paths.dump, paths.manifest, paths.offsite]) {
        await rm(file, { force: true });
      }
      return options.replicateMb / elapsed;
    };
    const copyFile = path.join(dirs.offsite, 'baseline.age');
    const ageSha = async () => {
      await dropCaches();
      const started = performance.now();
      await execa('age', ['-r', recipient, '-o', copyFile, sourceFile]);
      await execa('sha256sum', [copyFile]);
      const elapsed = (performance.now() - started) / 1000;
      await rm(copyFile, { force: true });
      return options.replicateMb / elapsed;
    };
    ctx.say(`replicate: the same backup encrypted (age), ${options.rounds} alternating rounds`);
    const runs = await alternate(
      options.rounds,
      { fn: viaReplicate, base: ageSha },
      { warmup: options.warmup },
    );
    ctx.record({
      id: 'replicate.large.age',
      group: 'replicate',
      name: `replicate ${options.replicateMb >= 1024 ? `${options.replicateMb / 1024} GiB` : `${options.replicateMb} MiB`} backup encrypted (age), arrival -> receipt`,
      unit: 'MiB/s',
      fn: summarize(runs.fn),
      baseline: { ...summarize(runs.base), label: 'age -r + sha256sum' },
      goals: [{ of: 'ratio', op: '>=', value: 0.5 }],
      peakRssMb: Math.max(...peaks.slice(-options.rounds)),
      details: { sizeBytes: size },
      note: 'throughput: higher is better; the function also hashes the plaintext and re-reads the stored copy',
    });
  } finally {
    clock.close();
    await proc.stop();
  }
}
