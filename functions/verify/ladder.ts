// The rung ladder of one verification: the sandbox, the transfer with its hash, the listing, the restore
// as the tenant's own role, and the read-back checks, in order. It fills a Climb as it goes, so the report
// has what was established even when the climb breaks off; it writes no receipt and emits nothing.
import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import type { Manifest, Rung, RungName } from '../../shared/catalog/records.js';
import type { Config } from '../../shared/config.js';
import { AppError, isAppError } from '../../shared/errors.js';
import type { Artifact } from '../../shared/offsite/artifact.js';
import {
  type ArchiveHeader,
  ArchiveHeaderError,
  checkCompatibility,
  HEADER_READ_BYTES,
  imageFor,
  parseArchiveHeader,
} from '../../shared/pg/archive-header.js';
import { excludeEntries, extensionEntries } from '../../shared/pg/restore-list.js';
import {
  evaluateArchive,
  evaluateArtifact,
  evaluateIntegrity,
  evaluateRestore,
  evaluateSequences,
  evaluateStructure,
  evaluateVolume,
  FINDINGS,
  rung,
} from '../../shared/proof/rungs.js';
import {
  parseLastJson,
  queryJson,
  runSql,
  runSqlSteps,
  sqlError,
  throwIfCanceled,
} from '../../shared/sandbox/query.js';
import { type DriverSelection, sandboxTtlMs } from '../../shared/sandbox/select.js';
import type { ExecResult, Sandbox } from '../../shared/sandbox/types.js';
import { watchServer } from '../../shared/sandbox/watch.js';
import {
  extensionsSql,
  missingExtensionsSelect,
  postRestoreSql,
  preRestoreSql,
  type ReadBack,
  readBackSql,
  restoreRoleOf,
} from './sql.js';

/** What the checks read back when the manifest names no schema (nothing to ask the sandbox). */
const EMPTY_READ_BACK: ReadBack = {
  schemas: [],
  relations: [],
  counts: [],
  sequences: [],
  integrity: null,
  seconds: { structure: 0, volume: 0, sequences: 0, integrity: 0 },
};
/** Where the dump lands inside the sandbox. */
const SANDBOX_DUMP_NAME = 'backup.dump';

/**
 * pg_restore flags: one transaction (WAL-skipping COPY with wal_level=minimal), nothing reaching outside,
 * and nothing that would need more privilege than the restore role has (owners, grants).
 */
const RESTORE_FLAGS = [
  '--dbname=postgres',
  '--single-transaction',
  '--no-owner',
  '--no-acl',
  '--no-tablespaces',
  '--no-publications',
  '--no-subscriptions',
  '--no-security-labels',
] as const;

/** Thrown inside a verification to end it as unverifiable with a bounded reason. */
function unverifiableError(reason: string, message: string): AppError {
  return new AppError('unverifiable', message, { details: { reason } });
}

export const since = (t: number) => (performance.now() - t) / 1000;

/** One verification's climb: what it is given, and what it has established so far. */
export interface Climb {
  config: Config;
  selection: DriverSelection;
  manifest: Manifest;
  artifact: Artifact | undefined;
  /** Which copy is verified (local or offsite), for messages. */
  source: string;
  signal: AbortSignal;
  rungs: Partial<Record<RungName, Rung>>;
  /** Seconds per stage (sandbox, prepare, transfer, archive, extensions, restore, checks, teardown). */
  stages: Record<string, number>;
  versions: Record<string, string>;
  driverName: string;
  image?: string | undefined;
  /** The sandbox once started: the caller removes it, whatever the climb's end. */
  sandbox?: Sandbox | undefined;
}

/** Runs `fn` and records its wall time in `stages[name]`. */
export function stageTimer(stages: Record<string, number>) {
  return async <T>(name: string, fn: () => Promise<T>): Promise<T> => {
    const s = performance.now();
    try {
      return await fn();
    } finally {
      stages[name] = Number(since(s).toFixed(3));
    }
  };
}

/** Climbs the rungs in order; stops at the first that does not pass, throws to end as unverifiable. */
export async function climbRungs(c: Climb): Promise<void> {
  const { config, selection, manifest, artifact, source, signal, rungs, versions } = c;
  const opts = { signal };
  const stage = stageTimer(c.stages);
  // Artifact presence and size are known before any sandbox starts.
  if (!artifact) {
    rungs.artifact = rung(
      'artifact',
      'failed',
      FINDINGS.artifactMissing,
      0,
      `the ${source} dump file is missing`,
    );
    return;
  }
  const size = artifact.sizeBytes;
  if (size !== manifest.sizeBytes) {
    rungs.artifact = evaluateArtifact(manifest, { sizeBytes: size, sha256: '' }, 0);
    return;
  }
  let header: ArchiveHeader | undefined;
  try {
    header = parseArchiveHeader(await artifact.readHead(HEADER_READ_BYTES, signal));
    versions.archive = header.versionText;
    if (header.pgDumpVersion) versions.archivePgDump = header.pgDumpVersion;
  } catch (error) {
    if (!(error instanceof ArchiveHeaderError)) throw error;
    // The archive rung reports it with pg_restore's own words.
  }
  const compatibility = (v: {
    serverMajor?: number;
    pgRestoreMajor?: number;
    server?: string;
    pgRestore?: string;
  }) => {
    if (!header || !v.serverMajor || !v.pgRestoreMajor) return;
    const c = checkCompatibility({
      archive: header.version,
      sourceServerMajor: Math.floor(manifest.source.serverVersionNum / 10000),
      pgDumpMajor: manifest.pgDump.major,
      sandbox: {
        serverMajor: v.serverMajor,
        pgRestoreMajor: v.pgRestoreMajor,
        ...(v.server ? { server: v.server } : {}),
        ...(v.pgRestore ? { pgRestore: v.pgRestore } : {}),
      },
    });
    if (!c.ok) throw unverifiableError(c.code, c.message);
  };

  const { driver, status } = await selection.resolve();
  c.driverName = driver.name;
  c.image = status.image;
  // Known versions (local tools, the image's PG_VERSION) refuse early, before a sandbox starts.
  compatibility(status.versions ?? {});

  const box = await stage('sandbox', () =>
    driver.create({
      projectId: manifest.projectId,
      backupId: manifest.backupId,
      ttlMs: sandboxTtlMs(config),
      signal,
    }),
  );
  c.sandbox = box;
  c.image = box.image ?? c.image;
  versions.sandboxServer = box.versions.server;
  versions.pgRestore = box.versions.pgRestore;
  compatibility(box.versions);

  // The roles go in while the dump streams in: both wait on the sandbox, neither on the other. A
  // sandbox that cannot take the roles stops the transfer at once.
  const transferAbort = new AbortController();
  const preparing = stage('prepare', async () => {
    await requireExtensions(
      box,
      manifest.extensions.map((e) => e.name),
      opts,
    );
    const prepared = await runSql(
      box,
      preRestoreSql(manifest, { amcheck: config.FLUX_VERIFY_AMCHECK }),
      opts,
    );
    throwIfCanceled(prepared, signal);
    if (prepared.failed) {
      throw unverifiableError(
        'sandbox_failed',
        `preparing roles in the sandbox failed: ${prepared.stderr.trim().slice(-400)}`,
      );
    }
  });
  preparing.catch(() => transferAbort.abort(new AppError('shutting_down', 'the sandbox is not usable')));

  // Size and SHA-256 of exactly the bytes the sandbox receives.
  const hash = createHash('sha256');
  let bytes = 0;
  // Opened at transfer time: an offsite stream must not sit idle while the sandbox starts.
  const input = await artifact.open(signal);
  async function* hashed() {
    for await (const chunk of input) {
      hash.update(chunk as Buffer);
      bytes += (chunk as Buffer).length;
      yield chunk as Buffer;
    }
  }
  const transferStarted = performance.now();
  const [prepared, transferred] = await Promise.allSettled([
    preparing,
    stage('transfer', () =>
      box.putFile(SANDBOX_DUMP_NAME, Readable.from(hashed(), { objectMode: false }), size, {
        signal: AbortSignal.any([signal, transferAbort.signal]),
      }),
    ),
  ]);
  if (transferred.status === 'rejected') input.destroy();
  if (
    transferred.status === 'rejected' &&
    isAppError(transferred.reason) &&
    transferred.reason.code === 'artifact_invalid'
  ) {
    rungs.artifact = rung(
      'artifact',
      'failed',
      FINDINGS.sizeMismatch,
      since(transferStarted),
      transferred.reason.message,
    );
    return;
  }
  if (prepared.status === 'rejected') throw prepared.reason;
  if (transferred.status === 'rejected') throw transferred.reason;
  const inside = transferred.value;
  rungs.artifact = evaluateArtifact(
    manifest,
    { sizeBytes: bytes, sha256: hash.digest('hex') },
    since(transferStarted),
  );
  if (rungs.artifact.result !== 'passed') return;

  // The listing comes first: it is the archive rung, and it says which entries the superuser
  // handles before the restore (a project database's extensions).
  const listed = await stage('archive', () => box.exec(['pg_restore', '--list', inside], opts));
  throwIfCanceled(listed, signal);
  rungs.archive = evaluateArchive(listed, listed.seconds);
  if (rungs.archive.result === 'could_not_verify') {
    const needed = Math.max(manifest.pgDump.major, Math.floor(manifest.source.serverVersionNum / 10000));
    throw unverifiableError(
      FINDINGS.archiveVersionUnsupported,
      `${rungs.archive.message}; set FLUX_BACKUP_VERIFY_POSTGRES_IMAGE=${imageFor(needed)} (PostgreSQL ${needed} or newer)`,
    );
  }
  if (rungs.archive.result !== 'passed') return;

  const listFile = await stage('extensions', () => prepareExtensions(box, manifest, listed.stdout, opts));
  if (listFile === undefined) delete c.stages.extensions;

  // The tenant's objects are created by, and its code runs as, its own unprivileged role; whether
  // the server stayed up meanwhile is watched, not read from what the restore printed.
  const watch = await watchServer(box, opts);
  let restored: ExecResult;
  let isServerGone: boolean;
  try {
    restored = await stage('restore', () =>
      box.exec(['pg_restore', ...RESTORE_FLAGS, ...(listFile ? [`--use-list=${listFile}`] : []), inside], {
        ...opts,
        user: restoreRoleOf(manifest),
      }),
    );
    throwIfCanceled(restored, signal);
    isServerGone = restored.sandboxGone === true || (restored.exitCode !== 0 && !(await watch.isIntact()));
  } finally {
    watch.stop();
  }
  rungs.restore = evaluateRestore(restored, restored.seconds, { isServerGone });
  if (rungs.restore.result !== 'passed') return;

  await stage('checks', async () => {
    const readBack = await readBackFor(box, manifest, config.FLUX_VERIFY_AMCHECK, opts);
    rungs.structure = evaluateStructure(manifest, readBack, readBack.seconds.structure);
    rungs.volume = evaluateVolume(manifest.tables, readBack.counts, readBack.seconds.volume);
    rungs.sequences = evaluateSequences(manifest.sequences, readBack.sequences, readBack.seconds.sequences);
    rungs.integrity = integrityRung(readBack, config.FLUX_VERIFY_AMCHECK);
  });
}

/** Refuses (unverifiable) a sandbox that cannot install every one of `names`. */
async function requireExtensions(
  box: Sandbox,
  names: readonly string[],
  opts: { signal: AbortSignal },
): Promise<void> {
  if (names.length === 0) return;
  const missing = await queryJson<{ name: string }>(
    box,
    missingExtensionsSelect(names),
    'listing available extensions',
    opts,
  );
  if (missing.length > 0) {
    throw unverifiableError(
      'extension_unavailable',
      `the sandbox cannot install extension(s) the backup uses: ${missing.map((m) => m.name).join(', ')}; ` +
        `use a FLUX_BACKUP_VERIFY_POSTGRES_IMAGE (or local PostgreSQL packages) that ships them`,
    );
  }
}

/**
 * A project database's archive creates its extensions: the superuser creates them first (our fixed
 * statements, in the schemas the manifest recorded) and the restore skips those entries. Returns the
 * restore list to use, or undefined when the archive names no extension.
 */
async function prepareExtensions(
  box: Sandbox,
  manifest: Manifest,
  list: string,
  opts: { signal: AbortSignal },
): Promise<string | undefined> {
  const names = extensionEntries(list);
  if (names.length === 0) return undefined;
  await requireExtensions(box, names, opts);
  const { sql, schemas } = extensionsSql(names, manifest);
  const created = await runSql(box, sql, opts);
  throwIfCanceled(created, opts.signal);
  if (created.failed) {
    throw unverifiableError(
      'extension_unavailable',
      `creating the extension(s) ${names.join(', ')} in the sandbox failed: ${created.stderr.trim().slice(-400)}`,
    );
  }
  const filtered = excludeEntries(list, { schemas, extensions: true }).list;
  return box.putFile(
    'restore.list',
    Readable.from([Buffer.from(filtered)]),
    Buffer.byteLength(filtered),
    opts,
  );
}

/** Reads back schemas, tables, counts, sequences and amcheck results in one psql call. */
async function readBackFor(
  box: Sandbox,
  manifest: Manifest,
  amcheck: boolean,
  opts: { signal: AbortSignal },
): Promise<ReadBack> {
  if (manifest.schemas.length === 0) return EMPTY_READ_BACK;
  // The grants as the superuser, then the read-back as the tenant's own role (one exec where psql runs it).
  const result = await runSqlSteps(
    box,
    [
      { sql: postRestoreSql(manifest) },
      {
        sql: readBackSql({
          schemas: manifest.schemas,
          tables: manifest.tables,
          sequences: manifest.sequences,
          amcheck,
        }),
        user: restoreRoleOf(manifest),
      },
    ],
    opts,
  );
  throwIfCanceled(result, opts.signal);
  if (result.failed) throw sqlError('reading back the restored database', result);
  return parseLastJson<ReadBack>(result.stdout, 'reading back the restored database');
}

function integrityRung(readBack: ReadBack, amcheck: boolean): Rung {
  const seconds = readBack.seconds.integrity;
  if (!amcheck) {
    return rung('integrity', 'not_applicable', FINDINGS.disabled, 0, 'FLUX_VERIFY_AMCHECK=false');
  }
  const integrity = readBack.integrity;
  if (!integrity) return evaluateIntegrity([], seconds);
  if (!integrity.available) {
    return rung(
      'integrity',
      'not_applicable',
      FINDINGS.amcheckUnavailable,
      seconds,
      'the sandbox has no amcheck extension (contrib); the integrity rung is optional',
    );
  }
  if (integrity.error !== null) {
    return rung(
      'integrity',
      'could_not_verify',
      FINDINGS.amcheckUnavailable,
      seconds,
      `amcheck could not run: ${integrity.error.slice(0, 300)}`,
    );
  }
  return evaluateIntegrity(integrity.indexes, seconds);
}
