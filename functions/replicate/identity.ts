// The offsite store's identity. On first use the replicator writes a marker object at the store's root
// (a random store id) and records that id under FLUX_STATE_DIR; every copy first reads the marker back.
// An unmounted mount point, an emptied or different bucket at the same address, has no marker or another
// one: nothing is copied there (it would be labelled "offsite replicated" on a disk that is not offsite,
// and hidden again when the real store is mounted), and readiness and the failure receipts say why.
import { createHash, randomUUID } from 'node:crypto';
import { mkdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';
import { writeJsonAtomic } from '../../shared/atomic.js';
import { AppError, errnoOf, isAppError } from '../../shared/errors.js';
import type { OffsiteStore } from '../../shared/offsite/types.js';

/** The marker's key at the store's root (a plain key: never a project directory, which is a UUID). */
export const STORE_MARKER_KEY = 'flux-ops-store.json';

/** Under FLUX_STATE_DIR: the store id recorded per store location. */
export const IDENTITY_STATE_FILE = path.join('replicate', 'offsite-store.json');

interface StateFile {
  stores: Record<string, { storeId: string; recordedAt: string }>;
}

export interface IdentityStatus {
  ok: boolean;
  detail: string;
  storeId?: string;
}

export interface StoreIdentity {
  /**
   * Before a copy: the store is the one recorded (or, on first use, is marked and recorded now).
   * Throws AppError `dependency_unavailable` with reason `store_identity` when it is not.
   */
  ensure(): Promise<string>;
  /** For readiness: the same comparison without writing anything. */
  status(): Promise<IdentityStatus>;
}

function mismatch(message: string, details: Record<string, unknown>): AppError {
  return new AppError('dependency_unavailable', message, {
    details: { reason: 'store_identity', ...details },
  });
}

export function createStoreIdentity(options: { store: OffsiteStore; stateDir: string }): StoreIdentity {
  const { store } = options;
  const stateFile = path.join(options.stateDir, IDENTITY_STATE_FILE);
  let inFlight: Promise<string> | undefined;

  async function readState(): Promise<StateFile> {
    try {
      const parsed = JSON.parse(await readFile(stateFile, 'utf8')) as Partial<StateFile>;
      return { stores: parsed.stores && typeof parsed.stores === 'object' ? parsed.stores : {} };
    } catch (error) {
      if (errnoOf(error) === 'ENOENT') return { stores: {} };
      throw new AppError(
        'internal',
        `cannot read ${stateFile} (${errnoOf(error) ?? (error as Error).message}): it records which offsite store this replicator writes to; fix or remove it`,
        { cause: error },
      );
    }
  }

  async function record(storeId: string): Promise<void> {
    const state = await readState();
    state.stores[store.location] = { storeId, recordedAt: new Date().toISOString() };
    try {
      await mkdir(path.dirname(stateFile), { recursive: true });
      await writeJsonAtomic(stateFile, state);
    } catch (error) {
      throw new AppError(
        'dir_not_writable',
        `cannot record the offsite store id in ${stateFile} (${errnoOf(error) ?? (error as Error).message}): FLUX_STATE_DIR must be writable by this process (uid ${process.getuid?.()})`,
        { cause: error },
      );
    }
  }

  /** The store id the marker names; undefined when there is no marker. */
  async function readMarker(): Promise<string | undefined> {
    if (!(await store.head(STORE_MARKER_KEY))) return undefined;
    const chunks: Buffer[] = [];
    for await (const chunk of await store.get(STORE_MARKER_KEY)) chunks.push(chunk as Buffer);
    try {
      const storeId = (JSON.parse(Buffer.concat(chunks).toString('utf8')) as { storeId?: unknown }).storeId;
      if (typeof storeId === 'string' && storeId.length > 0) return storeId;
    } catch {
      // Reported below.
    }
    throw mismatch(
      `the offsite store at ${store.location} has a marker ${STORE_MARKER_KEY} that names no store id; nothing is copied until it is restored or removed`,
      { location: store.location },
    );
  }

  /** Writes a new marker; when another replicator got there first, its marker wins. */
  async function writeMarker(): Promise<string> {
    const body = Buffer.from(
      `${JSON.stringify({ storeId: randomUUID(), createdAt: new Date().toISOString() })}\n`,
    );
    const sha256 = createHash('sha256').update(body).digest('hex');
    await store.put(STORE_MARKER_KEY, Readable.from([body]), { sha256, sizeBytes: body.length });
    const written = await readMarker();
    if (!written) throw mismatch(`the offsite store at ${store.location} did not keep its marker`, {});
    return written;
  }

  /** Compares the marker with the recorded id; `create` marks a store nobody recorded yet. */
  async function compare(create: boolean): Promise<IdentityStatus> {
    const recorded = (await readState()).stores[store.location]?.storeId;
    let marker = await readMarker();
    if (recorded === undefined) {
      if (!create) {
        return {
          ok: true,
          detail:
            marker === undefined
              ? `not marked yet: the first copy marks the store (${STORE_MARKER_KEY})`
              : `store ${marker}, recorded at the next copy`,
        };
      }
      marker ??= await writeMarker();
      await record(marker);
      return { ok: true, storeId: marker, detail: `store ${marker}` };
    }
    if (marker === recorded) return { ok: true, storeId: marker, detail: `store ${marker}` };
    const what =
      marker === undefined
        ? `its marker ${STORE_MARKER_KEY} is missing`
        : `its marker names store ${marker}, not ${recorded}`;
    throw mismatch(
      `the offsite store at ${store.location} is not the store this replicator has been writing to (${recorded}): ${what}. ` +
        'Nothing is copied there until that store is back (an unmounted mount point? an emptied or different bucket?). ' +
        `If it was replaced on purpose, remove ${stateFile}: the next reconcile marks the new store and copies every ` +
        'backup it lacks.',
      { location: store.location, expectedStoreId: recorded, ...(marker ? { foundStoreId: marker } : {}) },
    );
  }

  return {
    ensure() {
      // Concurrent copies share one check (1,000 arrivals at once read the marker once).
      inFlight ??= compare(true)
        .then((s) => s.storeId!)
        .finally(() => {
          inFlight = undefined;
        });
      return inFlight;
    },
    async status() {
      try {
        return await compare(false);
      } catch (error) {
        return { ok: false, detail: isAppError(error) ? error.message : String(error) };
      }
    },
  };
}
