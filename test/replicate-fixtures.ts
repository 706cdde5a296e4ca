// Backups as dump leaves them, without Postgres: dump bytes written atomically, then a manifest whose
// sha256/size match them written atomically last. Plus readers for what replicate leaves behind.
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { readdir, readFile, rename } from 'node:fs/promises';
import path from 'node:path';
import { ensureDir, tempPathFor, writeFileAtomic, writeJsonAtomic } from '../shared/atomic.js';
import { newBackupId } from '../shared/catalog/ids.js';
import { backupPaths } from '../shared/catalog/layout.js';
import {
  type Manifest,
  type OffsiteReceipt,
  OffsiteReceiptSchema,
  type VerifyReceipt,
} from '../shared/catalog/records.js';
import { errnoOf } from '../shared/errors.js';

export const sha256Of = (bytes: Buffer | string) => createHash('sha256').update(bytes).digest('hex');

export function fakeManifest(
  projectId: string,
  backupId: string,
  dump: { sizeBytes: number; sha256: string },
): Manifest {
  const now = new Date().toISOString();
  return {
    manifestVersion: 1,
    backupId,
    projectId,
    projectHash: projectId.slice(0, 7),
    slug: `p-${projectId.slice(0, 8)}`,
    kind: 'project_db',
    format: 'custom',
    file: `${backupId}.dump`,
    sizeBytes: dump.sizeBytes,
    sha256: dump.sha256,
    createdAt: now,
    completedAt: now,
    source: {
      engine: 'v1_dedicated',
      host: '127.0.0.1',
      port: 5432,
      database: 'app',
      systemIdentifier: '7000000000000000000',
      serverVersion: '15.8',
      serverVersionNum: 150008,
    },
    pgDump: { version: '15.8', major: 15, flags: ['-Fc'] },
    snapshot: { id: '00000003-00000002-1', isolation: 'repeatable read', takenAt: now },
    schemas: ['public'],
    tables: [{ schema: 'public', name: 'items', rows: 3 }],
    sequences: [],
    extensions: [],
    roles: [],
  };
}

/** A verify receipt of the local copy for `sha256`, finished at `at`; a failure carries a reason and error. */
export function fakeVerifyReceipt(
  projectId: string,
  backupId: string,
  sha256: string,
  status: VerifyReceipt['status'] = 'restore_verified',
  at = new Date().toISOString(),
): VerifyReceipt {
  return {
    backupId,
    projectId,
    status,
    sha256,
    source: 'local',
    driver: 'local',
    versions: {},
    rungs: [],
    stages: {},
    startedAt: at,
    finishedAt: at,
    seconds: 1,
    ...(status === 'restore_verified' ? {} : { reason: 'r', error: `${status}: why` }),
  };
}

export interface FakeBackup {
  projectId: string;
  backupId: string;
  sha256: string;
  sizeBytes: number;
  dump: string;
  manifest: string;
}

/**
 * Writes `<root>/<projectId>/<id>.dump` then its manifest, each temp → fsync → rename → fsync dir.
 * `onDisk` replaces the dump bytes actually written (a partial or altered file the manifest does not match).
 */
export async function writeBackup(
  root: string,
  projectId: string,
  options: { bytes?: Buffer; withManifest?: boolean; onDisk?: (bytes: Buffer) => Buffer } = {},
): Promise<FakeBackup> {
  const backupId = newBackupId();
  const bytes = options.bytes ?? randomBytes(512 + Math.floor(Math.random() * 3000));
  const paths = backupPaths(root, projectId, backupId);
  await ensureDir(paths.dir);
  await writeFileAtomic(paths.dump, options.onDisk ? options.onDisk(Buffer.from(bytes)) : bytes);
  const b = {
    projectId,
    backupId,
    sha256: sha256Of(bytes),
    sizeBytes: bytes.length,
    dump: paths.dump,
    manifest: paths.manifest,
  };
  if (options.withManifest !== false) await completeBackup(b);
  return b;
}

/** Writes the manifest of a backup written without one: from now on it counts as complete. */
export async function completeBackup(b: FakeBackup): Promise<void> {
  await writeJsonAtomic(b.manifest, fakeManifest(b.projectId, b.backupId, b));
}

/** A large backup streamed to disk in 1 MiB chunks (never held whole), then its manifest. */
export async function writeLargeBackup(
  root: string,
  projectId: string,
  sizeBytes: number,
): Promise<FakeBackup> {
  const backupId = newBackupId();
  const paths = backupPaths(root, projectId, backupId);
  await ensureDir(paths.dir);
  const tmp = tempPathFor(paths.dump);
  const hash = createHash('sha256');
  const out = createWriteStream(tmp);
  const block = randomBytes(1024 * 1024);
  for (let written = 0, i = 0; written < sizeBytes; i++) {
    const chunk = Buffer.from(block.subarray(0, Math.min(block.length, sizeBytes - written)));
    chunk.writeUInt32BE(i, 0);
    hash.update(chunk);
    written += chunk.length;
    if (!out.write(chunk)) await new Promise<void>((r) => out.once('drain', () => r()));
  }
  await new Promise<void>((resolve, reject) => out.end((e?: Error | null) => (e ? reject(e) : resolve())));
  await rename(tmp, paths.dump);
  const sha256 = hash.digest('hex');
  await writeJsonAtomic(paths.manifest, fakeManifest(projectId, backupId, { sizeBytes, sha256 }));
  return { projectId, backupId, sha256, sizeBytes, dump: paths.dump, manifest: paths.manifest };
}

export const newProjectId = () => randomUUID();

export async function readReceipt(localRoot: string, b: FakeBackup): Promise<OffsiteReceipt | undefined> {
  try {
    const text = await readFile(backupPaths(localRoot, b.projectId, b.backupId).offsite, 'utf8');
    return OffsiteReceiptSchema.parse(JSON.parse(text));
  } catch (error) {
    if (errnoOf(error) === 'ENOENT') return undefined;
    throw error;
  }
}

/** Every file under the offsite root as `<projectId>/<name>`, temp files included (they should not be there). */
export async function offsiteFiles(offsiteRoot: string): Promise<string[]> {
  const out: string[] = [];
  let projects: string[];
  try {
    projects = await readdir(offsiteRoot);
  } catch (error) {
    if (errnoOf(error) === 'ENOENT') return [];
    throw error;
  }
  for (const p of projects) {
    const names = await readdir(path.join(offsiteRoot, p)).catch(() => [] as string[]);
    for (const n of names) out.push(`${p}/${n}`);
  }
  return out.sort();
}

/** The value of one Prometheus sample, e.g. metricValue(text, 'flux_replicate_results_total', {outcome:'replicated'}). */
export function metricValue(text: string, name: string, labels: Record<string, string> = {}): number {
  let total = 0;
  let found = false;
  for (const line of text.split('\n')) {
    if (!line.startsWith(name)) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const have = Object.fromEntries(
      [...(m[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)].map((x) => [x[1], x[2]]),
    );
    if (Object.entries(labels).every(([k, v]) => have[k] === v)) {
      total += Number(m[3]);
      found = true;
    }
  }
  return found ? total : 0;
}
