// The file catalog: reads a project's backups from their files (dump, manifest, state, receipts), keeps
// artifact validation cached by size+mtime, and writes each record atomically.
import { readFileSync } from 'node:fs';
import { readdir, readFile, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import type { z } from 'zod';
import { ensureDir, hashFile, TEMP_PREFIX, writeJsonAtomic } from '../atomic.js';
import { AppError, errnoOf, fsWriteError } from '../errors.js';
import type { Logger } from '../log.js';
import { DEFAULT_MAX_AGE_MS } from '../schedule.js';
import type { RestorableFacts } from './freshness.js';
import { isUlid, isUuid } from './ids.js';
import { type BackupPaths, backupPaths, type CatalogFile, parseCatalogName, projectDir } from './layout.js';
import {
  type ApiBackup,
  type ArtifactCheck,
  apiBackupOf,
  type BackupFinding,
  type CatalogEntry,
  type CatalogFinding,
  createdAtOf,
  mayBeRestorable,
  type ProjectTrust,
  projectTrust,
  restorableOf,
} from './read-model.js';
import {
  authenticateRecord,
  distrustOf,
  type RecordAuth,
  type RecordKeys,
  type RecordKind,
  tagRecord,
} from './record-auth.js';
import {
  type BackupState,
  BackupStateSchema,
  type Manifest,
  ManifestSchema,
  type OffsiteReceipt,
  OffsiteReceiptSchema,
  type RehashRecord,
  RehashRecordSchema,
  type VerifyReceipt,
  VerifyReceiptSchema,
} from './records.js';

/**
 * How checkArtifact proves the dump: `cached` takes a hash read before while the file keeps its size and
 * mtime (lists and status); `rehash` reads every byte now (the destructive gates: a byte flipped with its
 * mtime kept is invisible to the cache).
 */
export type ArtifactProof = 'cached' | 'rehash';

/**
 * What migrate's gate and an in-place restore's gate ask: every byte of the local dump hashed again, each
 * time, before they pass (a cached validation is no proof after a byte flipped with its mtime kept).
 */
export const GATE_ARTIFACT_PROOF: ArtifactProof = 'rehash';

/**
 * The refusal of a backup whose manifest lies here but is not believed (verify, restore and download
 * answer it): manifest_misplaced or manifest_not_authentic, with the finding and what to do. Undefined
 * when the entry has no rejected manifest.
 */
export function rejectionOf(entry: CatalogEntry | undefined, action: string): AppError | undefined {
  if (!entry?.rejectedManifest || entry.manifest) return undefined;
  const finding = entry.findings?.find((f) => f.file === 'manifest');
  const code = finding?.code === 'manifest_misplaced' ? 'manifest_misplaced' : 'manifest_not_authentic';
  return new AppError(
    code,
    `backup ${entry.backupId} is not ${action}: ${finding?.message ?? 'its manifest is not believed'}. ` +
      'Put back the manifest dump wrote (flux-ops catalog rebuild --from offsite, if the offsite one authenticates) or take a new backup',
    { details: { reason: code } },
  );
}

export interface Catalog {
  readonly root: string;
  paths(projectId: string, backupId: string): BackupPaths;
  listProjects(): Promise<string[]>;
  /** A project's backups, newest first. */
  list(projectId: string): Promise<CatalogEntry[]>;
  /**
   * One page of list(): at most `limit` backups older than the backup `before` (from the newest when
   * absent), and the id to ask for the next page with (null on the last). Reads only what the page shows
   * when every id is a ULID; a `before` the catalog does not hold is `not_found` when ids are not ordered.
   */
  page(
    projectId: string,
    options: { limit: number; before?: string | undefined },
  ): Promise<{ entries: CatalogEntry[]; next: string | null }>;
  get(projectId: string, backupId: string): Promise<CatalogEntry | undefined>;
  /**
   * The newest backup `match` accepts, read back from the newest only as far as needed (the same order as
   * list()), so its cost follows how far back it looks, not the project's history.
   */
  newest(projectId: string, match: (entry: CatalogEntry) => boolean): Promise<CatalogEntry | undefined>;
  /** The local dump against its manifest; `proof` (default `cached`) says whether a cached hash may stand. */
  checkArtifact(entry: CatalogEntry, proof?: ArtifactProof): Promise<ArtifactCheck>;
  /** Records a hash we just computed ourselves, so the next list does not re-hash. */
  rememberArtifact(file: string, sizeBytes: number, mtimeMs: number, sha256: string): void;
  toApi(entry: CatalogEntry, artifact: ArtifactCheck): ApiBackup;
  /**
   * The newest backup's tier and the project's freshness (its newest restorable backup against
   * `policy.maxAgeMs`, default DEFAULT_MAX_AGE_MS). `policy.proof` as checkArtifact's (a gate re-hashes).
   * Reads back from the newest backup only until both are known (and the backups a finding was seen in),
   * so its cost does not grow with a project's history.
   */
  trust(
    projectId: string,
    slug?: string,
    now?: Date,
    policy?: { maxAgeMs?: number; proof?: ArtifactProof },
  ): Promise<ProjectTrust>;
  writeManifest(manifest: Manifest): Promise<void>;
  writeState(state: BackupState): Promise<void>;
  writeOffsiteReceipt(receipt: OffsiteReceipt): Promise<void>;
  writeVerifyReceipt(receipt: VerifyReceipt): Promise<void>;
  /** replicate's re-hash finding; `undefined` removes it (the dump matches again). */
  writeRehashRecord(projectId: string, backupId: string, record: RehashRecord | undefined): Promise<void>;
  remove(projectId: string, backupId: string): Promise<void>;
  /** Writes a pending save of the validation cache now and waits for it (a stopping function calls it). */
  flush(): Promise<void>;
}

async function readJson<T>(file: string, schema: z.ZodType<T>): Promise<{ value?: T; error?: string }> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (error) {
    if (errnoOf(error) === 'ENOENT') return {};
    return { error: `${path.basename(file)}: ${(error as Error).message}` };
  }
  try {
    const parsed = schema.safeParse(JSON.parse(text));
    return parsed.success
      ? { value: parsed.data }
      : { error: `${path.basename(file)} does not match its schema: ${parsed.error.issues[0]?.message}` };
  } catch {
    return { error: `${path.basename(file)} is not valid JSON` };
  }
}

export interface CatalogOptions {
  root: string;
  log?: Logger;
  /**
   * Where artifact validations are kept across restarts (under FLUX_STATE_DIR): without it the first list
   * after a restart would re-hash every dump of a project.
   */
  cacheFile?: string;
  /**
   * FLUX_MANIFEST_SECRETS (+ FLUX_MANIFEST_ALLOW_UNSIGNED): manifests and receipts that do not authenticate
   * count as absent, and the receipts this catalog writes are tagged. Without keys nothing is checked.
   */
  keys?: RecordKeys;
  /** Told of each finding once per record per process (the runtime emits flux.backup.integrity_finding). */
  onFinding?: (finding: BackupFinding, entry: CatalogEntry) => void;
}

/** The record kind record-auth.ts tags each catalog file as. */
const RECORD_KIND: Partial<Record<CatalogFile, RecordKind>> = {
  manifest: 'manifest',
  verify: 'verify-receipt',
  verifyOffsite: 'verify-offsite-receipt',
  offsite: 'offsite-receipt',
  rehash: 'rehash-record',
};

/** Records nobody wrote a manifest or state for (a lone receipt) are not backups. */
const isBackup = (e: CatalogEntry) => Boolean(e.manifest || e.state || e.unreadable || e.rejectedManifest);

/** How long a project directory must have been unchanged for its listing to be kept. */
const LISTING_SETTLED_MS = 2_000;

/** The most backups trust() reads at once going back from the newest. */
const NEWEST_BATCH_MAX = 16;

/** Findings remembered per process, so a record read on every list is reported once. */
const REPORTED_MAX = 10_000;

type ArtifactCacheEntry = { sizeBytes: number; mtimeMs: number; sha256: string };

function loadArtifactCache(file: string | undefined): Map<string, ArtifactCacheEntry> {
  if (!file) return new Map();
  try {
    return new Map(
      Object.entries(JSON.parse(readFileSync(file, 'utf8')) as Record<string, ArtifactCacheEntry>),
    );
  } catch {
    // Missing or unreadable: validations are only a cache; they are redone from the files.
    return new Map();
  }
}

export function createCatalog(options: CatalogOptions): Catalog {
  const { root } = options;
  const keys: RecordKeys = options.keys ?? { secrets: [] };
  const reported = new Set<string>();
  // Each project's findings as last read, per backup: trust() reads these backups again to show them.
  const knownFindings = new Map<string, Map<string, CatalogFinding[]>>();
  const knowFindings = (projectId: string, backupId: string, findings: CatalogFinding[] | undefined) => {
    let perBackup = knownFindings.get(projectId);
    if (!findings) {
      perBackup?.delete(backupId);
      return;
    }
    if (!perBackup) {
      perBackup = new Map();
      knownFindings.set(projectId, perBackup);
    }
    perBackup.set(backupId, findings);
  };
  const artifactCache = loadArtifactCache(options.cacheFile);
  let saveTimer: NodeJS.Timeout | undefined;
  let saving: Promise<void> = Promise.resolve();
  const save = (cacheFile: string) => {
    saveTimer = undefined;
    saving = saving
      .then(() => ensureDir(path.dirname(cacheFile)))
      .then(() => writeJsonAtomic(cacheFile, Object.fromEntries(artifactCache)))
      .catch((error) => options.log?.warn({ err: error }, 'could not save the artifact validation cache'));
  };
  const remember = (file: string, value: ArtifactCacheEntry | undefined) => {
    if (value) artifactCache.set(file, value);
    else artifactCache.delete(file);
    const cacheFile = options.cacheFile;
    if (!cacheFile || saveTimer) return;
    // Batched: a listing that validates many dumps writes the cache once.
    saveTimer = setTimeout(() => save(cacheFile), 200);
    saveTimer.unref();
  };
  const inFlightHashes = new Map<string, Promise<{ sizeBytes: number; sha256: string }>>();

  /**
   * One backup's records. `names` is its project directory's listing when the caller has one (a list);
   * without it each file is read directly and a missing one is absent, so reading one backup costs the
   * same in a project of one backup as in one of thousands.
   */
  async function load(projectId: string, backupId: string, names?: Set<string>): Promise<CatalogEntry> {
    const paths = backupPaths(root, projectId, backupId);
    const entry: CatalogEntry = { projectId, backupId, paths };
    const problems: string[] = [];
    const read = async <T>(file: string, schema: z.ZodType<T>): Promise<T | undefined> => {
      if (names && !names.has(path.basename(file))) return undefined;
      const { value, error } = await readJson(file, schema);
      if (error) problems.push(error);
      return value;
    };
    const [manifest, state, offsite, verify, verifyOffsite, rehash] = await Promise.all([
      read(paths.manifest, ManifestSchema),
      read(paths.state, BackupStateSchema),
      read(paths.offsite, OffsiteReceiptSchema),
      read(paths.verify, VerifyReceiptSchema),
      read(paths.verifyOffsite, VerifyReceiptSchema),
      read(paths.rehash, RehashRecordSchema),
    ]);
    const findings: CatalogFinding[] = [];
    // A record is believed only when it names this very backup and authenticates; otherwise it is absent.
    const admit = <T extends { projectId: string; backupId: string; auth?: RecordAuth | undefined }>(
      file: CatalogFile,
      schema: z.ZodType<T>,
      record: T | undefined,
    ): T | undefined => {
      if (!record) return undefined;
      const isManifest = file === 'manifest';
      const name = path.basename(paths[file]);
      if (record.projectId !== projectId || record.backupId !== backupId) {
        findings.push({
          code: isManifest ? 'manifest_misplaced' : 'receipt_misplaced',
          file,
          message: `${name} names backup ${record.backupId} of project ${record.projectId}, not the one its path says; not believed`,
        });
        return undefined;
      }
      const kind = RECORD_KIND[file];
      const why = kind ? distrustOf(authenticateRecord(kind, schema, record, keys.secrets), keys) : undefined;
      if (why) {
        findings.push({
          code: isManifest ? 'manifest_not_authentic' : 'receipt_not_authentic',
          file,
          message: `${name}: ${why}; not believed`,
        });
        return undefined;
      }
      return record;
    };
    const trustedManifest = admit('manifest', ManifestSchema, manifest);
    if (trustedManifest) entry.manifest = trustedManifest;
    else if (manifest) entry.rejectedManifest = manifest;
    if (state) entry.state = state;
    const trustedOffsite = admit('offsite', OffsiteReceiptSchema, offsite);
    if (trustedOffsite) entry.offsite = trustedOffsite;
    const trustedVerify = admit('verify', VerifyReceiptSchema, verify);
    if (trustedVerify) entry.verify = trustedVerify;
    const trustedVerifyOffsite = admit('verifyOffsite', VerifyReceiptSchema, verifyOffsite);
    if (trustedVerifyOffsite?.source === 'local') {
      // The offsite copy's receipt says it is about the local dump: it is not this copy's verification.
      findings.push({
        code: 'receipt_misplaced',
        file: 'verifyOffsite',
        message: `${path.basename(paths.verifyOffsite)} is a verification of the local copy, not the offsite one; not believed`,
      });
    } else if (trustedVerifyOffsite) entry.verifyOffsite = trustedVerifyOffsite;
    const trustedRehash = admit('rehash', RehashRecordSchema, rehash);
    if (trustedRehash) entry.rehash = trustedRehash;
    if (findings.length > 0) {
      entry.findings = findings;
      for (const finding of findings) report(entry, finding);
    }
    knowFindings(projectId, backupId, entry.findings);
    if (problems.length > 0) {
      entry.unreadable = problems.join('; ');
      options.log?.warn({ projectId, backupId, problems }, 'catalog file unreadable');
    }
    if (!names || names.has(path.basename(paths.dump))) {
      try {
        const s = await stat(paths.dump);
        entry.dump = { sizeBytes: s.size, mtimeMs: s.mtimeMs };
      } catch (error) {
        if (errnoOf(error) !== 'ENOENT') throw error;
      }
    }
    return entry;
  }

  function report(entry: CatalogEntry, finding: CatalogFinding) {
    const key = `${entry.paths[finding.file]}|${finding.code}`;
    if (reported.has(key)) return;
    if (reported.size >= REPORTED_MAX) reported.clear();
    reported.add(key);
    options.log?.warn(
      { projectId: entry.projectId, backupId: entry.backupId, code: finding.code, file: finding.file },
      finding.message,
    );
    options.onFinding?.({ projectId: entry.projectId, backupId: entry.backupId, ...finding }, entry);
  }

  // Each project directory's listing, kept while the directory is unchanged (its mtime, to the
  // nanosecond): a status does not re-read thousands of names to learn nothing was added.
  const listings = new Map<string, { mtimeNs: bigint; ids: string[]; names: Set<string> }>();

  /** A project's backup ids, newest first (ids are ULIDs of the moment dump started), and its file names. */
  async function listing(projectId: string): Promise<{ ids: string[]; names: Set<string> }> {
    const dir = projectDir(root, projectId);
    let mtimeNs: bigint;
    try {
      mtimeNs = (await stat(dir, { bigint: true })).mtimeNs;
    } catch (error) {
      if (errnoOf(error) !== 'ENOENT') throw error;
      listings.delete(projectId);
      return { ids: [], names: new Set() };
    }
    const kept = listings.get(projectId);
    if (kept && kept.mtimeNs === mtimeNs) return kept;
    const names = (await namesIn(dir)).filter((n) => !n.startsWith(TEMP_PREFIX));
    // A backup's files start with its id (a 26-character ULID, or a 36-character UUID): one parse each.
    const ids = new Set<string>();
    for (const name of names) {
      if (ids.has(name.slice(0, 26)) || ids.has(name.slice(0, 36))) continue;
      const parsed = parseCatalogName(name);
      if (parsed) ids.add(parsed.backupId);
    }
    const listed = { mtimeNs, ids: [...ids].sort().reverse(), names: new Set(names) };
    // A change in the same clock tick as the last one may leave the mtime as it was: a listing is kept
    // only once the directory has been still for a while (git's "racy" rule).
    if (Date.now() - Number(mtimeNs / 1_000_000n) > LISTING_SETTLED_MS) listings.set(projectId, listed);
    else listings.delete(projectId);
    return listed;
  }

  /**
   * A project's backups newest first, read a few at a time for a reader that stops at what it needs (the
   * newest believed one, the newest restorable one): the cost follows how far back it looks, not the
   * project's history.
   */
  async function* newestFirst(projectId: string, ids: string[], names: Set<string>) {
    // The newest alone first (usually all a status needs), then batches doubling up to NEWEST_BATCH_MAX.
    for (let i = 0, size = 1; i < ids.length; i += size, size = Math.min(size * 2, NEWEST_BATCH_MAX)) {
      const batch = await Promise.all(ids.slice(i, i + size).map((id) => load(projectId, id, names)));
      yield* batch.filter(isBackup);
    }
  }

  /**
   * A project's backups newest first, as list() orders them: read lazily when every id is a ULID (they
   * sort by creation time); a catalog holding any other id (a UUID) is read whole and sorted as list() does.
   */
  async function inOrder(projectId: string, ids: string[], names: Set<string>) {
    return ids.every(isUlid) ? newestFirst(projectId, ids, names) : catalog.list(projectId);
  }

  async function namesIn(dir: string): Promise<string[]> {
    try {
      return await readdir(dir);
    } catch (error) {
      if (errnoOf(error) === 'ENOENT') return [];
      throw error;
    }
  }

  const catalog: Catalog = {
    root,
    paths: (projectId, backupId) => backupPaths(root, projectId, backupId),

    async listProjects() {
      return (await namesIn(root)).filter(isUuid).sort();
    },

    async list(projectId) {
      const { ids, names } = await listing(projectId);
      const entries = await Promise.all(ids.map((id) => load(projectId, id, names)));
      return entries
        .filter(isBackup)
        .sort((a, b) => createdAtOf(b).localeCompare(createdAtOf(a)) || b.backupId.localeCompare(a.backupId));
    },

    async page(projectId, { limit, before }) {
      const { ids, names } = await listing(projectId);
      const ordered = ids.every(isUlid);
      // ULIDs sort by creation time: the page starts right below `before` and reads no further than it.
      const from = ordered && before !== undefined ? ids.filter((id) => id < before) : ids;
      let isPast = ordered || before === undefined;
      const entries: CatalogEntry[] = [];
      for await (const entry of await inOrder(projectId, from, names)) {
        if (!isPast) {
          isPast = entry.backupId === before;
          continue;
        }
        if (entries.length === limit) return { entries, next: entries.at(-1)!.backupId };
        entries.push(entry);
      }
      if (!isPast) throw new AppError('not_found', `no backup ${before} to page from`);
      return { entries, next: null };
    },

    async get(projectId, backupId) {
      const entry = await load(projectId, backupId);
      return isBackup(entry) ? entry : undefined;
    },

    async newest(projectId, match) {
      const { ids, names } = await listing(projectId);
      for await (const entry of await inOrder(projectId, ids, names)) if (match(entry)) return entry;
      return undefined;
    },

    async checkArtifact(entry, proof = 'cached') {
      const manifest = entry.manifest;
      if (!manifest) return { status: 'pending' };
      if (!entry.dump) return { status: 'missing', error: 'the dump file is missing' };
      if (entry.dump.sizeBytes !== manifest.sizeBytes) {
        return {
          status: 'invalid',
          error: `size ${entry.dump.sizeBytes} B, manifest says ${manifest.sizeBytes} B`,
        };
      }
      const file = entry.paths.dump;
      const cached = artifactCache.get(file);
      const rehash = entry.rehash;
      const dump = entry.dump;
      // The destructive gates read every byte now: a cache and a re-hash finding are about earlier reads.
      const known =
        proof === 'rehash'
          ? undefined
          : rehash &&
              rehash.manifestSha256 === manifest.sha256 &&
              rehash.sizeBytes === dump.sizeBytes &&
              rehash.mtimeMs === dump.mtimeMs
            ? // A re-hash read these very bytes (same size and mtime) after any cached validation did.
              rehash.foundSha256
            : cached && cached.sizeBytes === dump.sizeBytes && cached.mtimeMs === dump.mtimeMs
              ? cached.sha256
              : undefined;
      let sha256: string;
      if (known) sha256 = known;
      else {
        // A gate's hash starts now: it does not join one that began before the call.
        let pending = proof === 'rehash' ? undefined : inFlightHashes.get(file);
        if (!pending) {
          pending = hashFile(file);
          if (proof !== 'rehash') {
            const shared = pending.finally(() => inFlightHashes.delete(file));
            inFlightHashes.set(file, shared);
            pending = shared;
          }
        }
        try {
          sha256 = (await pending).sha256;
        } catch (error) {
          if (errnoOf(error) === 'ENOENT') return { status: 'missing', error: 'the dump file is missing' };
          throw error;
        }
        remember(file, { sizeBytes: entry.dump.sizeBytes, mtimeMs: entry.dump.mtimeMs, sha256 });
      }
      return sha256 === manifest.sha256
        ? { status: 'valid' }
        : {
            status: 'invalid',
            error: `sha256 ${sha256.slice(0, 12)}… differs from the manifest's ${manifest.sha256.slice(0, 12)}…`,
          };
    },

    rememberArtifact(file, sizeBytes, mtimeMs, sha256) {
      remember(file, { sizeBytes, mtimeMs, sha256 });
    },

    toApi(entry, artifact) {
      return apiBackupOf(entry, artifact, root);
    },

    async trust(projectId, slug, now = new Date(), policy = {}) {
      const proof = policy.proof ?? 'cached';
      const { ids, names } = await listing(projectId);
      let newest: { entry: CatalogEntry; artifact: ArtifactCheck } | undefined;
      let restorable: RestorableFacts | undefined;
      // Read back from the newest only as far as needed: the newest believed backup gives the tier, the
      // newest restorable one the freshness (only backups a copy's receipt passed for are hashed, and
      // outside a gate the hashes are cached).
      const read = new Set<string>();
      for await (const entry of await inOrder(projectId, ids, names)) {
        read.add(entry.backupId);
        if (entry.rejectedManifest) continue;
        const artifact = newest ? undefined : await catalog.checkArtifact(entry, proof);
        newest ??= { entry, artifact: artifact! };
        if (!mayBeRestorable(entry)) continue;
        restorable = restorableOf(entry, artifact ?? (await catalog.checkArtifact(entry, proof)));
        if (restorable) break;
      }
      // Findings of every backup still here: a backup an earlier read found one in is read again (its
      // records may have been put right since); the others have none as far as this process has read
      // (dump's backup metrics list every backup at start-up and every FLUX_BACKUP_METRICS_REFRESH_MS).
      const present = new Set(ids);
      const again = [...(knownFindings.get(projectId)?.keys() ?? [])].filter(
        (id) => present.has(id) && !read.has(id),
      );
      await Promise.all(again.map((id) => load(projectId, id, names)));
      const findings = [...(knownFindings.get(projectId) ?? [])]
        .filter(([backupId]) => present.has(backupId))
        .sort(([a], [b]) => b.localeCompare(a))
        .flatMap(([backupId, found]) => found.map((f) => ({ projectId, backupId, ...f })));
      return projectTrust({
        projectId,
        slug,
        root,
        newest,
        restorable,
        findings,
        maxAgeMs: policy.maxAgeMs ?? DEFAULT_MAX_AGE_MS,
        now,
      });
    },

    async writeManifest(manifest) {
      await writeRecord(
        root,
        catalog.paths(manifest.projectId, manifest.backupId).manifest,
        ManifestSchema.parse(manifest),
      );
    },
    async writeState(state) {
      await writeRecord(
        root,
        catalog.paths(state.projectId, state.backupId).state,
        BackupStateSchema.parse(state),
      );
    },
    async writeOffsiteReceipt(receipt) {
      await writeRecord(
        root,
        catalog.paths(receipt.projectId, receipt.backupId).offsite,
        tagRecord('offsite-receipt', OffsiteReceiptSchema, OffsiteReceiptSchema.parse(receipt), keys.secrets),
      );
    },
    async writeVerifyReceipt(receipt) {
      // Each copy its own receipt: a verification of one copy never overwrites the other's.
      const parsed = VerifyReceiptSchema.parse(receipt);
      const paths = catalog.paths(receipt.projectId, receipt.backupId);
      const isOffsite = parsed.source === 'offsite';
      await writeRecord(
        root,
        isOffsite ? paths.verifyOffsite : paths.verify,
        tagRecord(
          isOffsite ? 'verify-offsite-receipt' : 'verify-receipt',
          VerifyReceiptSchema,
          parsed,
          keys.secrets,
        ),
      );
    },

    async writeRehashRecord(projectId, backupId, record) {
      const file = catalog.paths(projectId, backupId).rehash;
      if (record)
        await writeRecord(
          root,
          file,
          tagRecord('rehash-record', RehashRecordSchema, RehashRecordSchema.parse(record), keys.secrets),
        );
      else await rm(file, { force: true });
    },

    async flush() {
      if (saveTimer && options.cacheFile) {
        clearTimeout(saveTimer);
        save(options.cacheFile);
      }
      await saving;
    },

    async remove(projectId, backupId) {
      const p = catalog.paths(projectId, backupId);
      // The manifest goes first: without it the backup no longer counts as complete anywhere.
      for (const file of [p.manifest, p.dump, p.verify, p.verifyOffsite, p.offsite, p.state, p.rehash])
        await rm(file, { force: true });
      remember(p.dump, undefined);
      knowFindings(projectId, backupId, undefined);
    },
  };
  return catalog;
}

async function writeRecord(root: string, file: string, value: unknown): Promise<void> {
  try {
    await ensureDir(path.dirname(file));
    await writeJsonAtomic(file, value);
  } catch (error) {
    throw fsWriteError(error, file, `writing ${path.basename(file)} under ${root}`);
  }
}
