// The verify rungs run on a real target after a restore: what the database holds now (schemas, tables,
// exact row counts, sequence positions), read in one snapshot without running tenant code, compared with
// the backup's manifest by the same pure rules verify uses in its sandboxes.
import type pg from 'pg';
import type { Manifest, Rung } from '../catalog/records.js';
import { isAppError } from '../errors.js';
import { pgError, withPgClient } from '../pg/conn.js';
import { countInventory, type DumpScope, guardTenantReads, readInventory } from '../pg/snapshot.js';
import { evaluateSequences, evaluateStructure, evaluateVolume, type RestoredSequence } from './rungs.js';

export interface RestoredState {
  schemas: string[];
  relations: Array<{ schema: string; name: string; kind: string }>;
  counts: Array<{ schema: string; name: string; rows: number }>;
  sequences: RestoredSequence[];
  seconds: { structure: number; volume: number; sequences: number };
}

/**
 * Reads the restored scope in one REPEATABLE READ snapshot with the guards of every read of tenant
 * relations (search_path pg_catalog, no row security, no view where a table was) and rows counted by
 * COPY, which plans nothing, so no tenant expression runs as the reader.
 */
export async function readRestoredState(
  client: pg.Client,
  scope: DumpScope,
  statementTimeoutMs: number,
): Promise<RestoredState> {
  await client.query('BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY');
  try {
    await client.query(`SET LOCAL statement_timeout = ${Math.max(1, Math.floor(statementTimeoutMs))}`);
    await guardTenantReads(client);
    let t = performance.now();
    const inventory = await readInventory(client, scope);
    const structure = (performance.now() - t) / 1000;
    t = performance.now();
    const counted = await countInventory(client, { ...inventory, sequences: [] });
    const volume = (performance.now() - t) / 1000;
    t = performance.now();
    const withValues = await countInventory(client, { ...inventory, tables: [] });
    const increments = await client.query<{ schema: string; name: string; increment: string }>(
      `SELECT ns.nspname AS schema, c.relname AS name, s.seqincrement::text AS increment
         FROM pg_catalog.pg_sequence s JOIN pg_catalog.pg_class c ON c.oid = s.seqrelid
         JOIN pg_catalog.pg_namespace ns ON ns.oid = c.relnamespace
        WHERE (ns.nspname, c.relname) IN (SELECT * FROM unnest($1::text[], $2::text[]))`,
      [inventory.sequences.map((s) => s.schema), inventory.sequences.map((s) => s.name)],
    );
    const incrementOf = new Map(increments.rows.map((r) => [`${r.schema}.${r.name}`, r.increment]));
    const sequences = withValues.sequences.map((s) => ({
      ...s,
      increment: incrementOf.get(`${s.schema}.${s.name}`) ?? '1',
    }));
    const seqSeconds = (performance.now() - t) / 1000;
    await client.query('COMMIT');
    return {
      schemas: inventory.schemas,
      relations: [
        ...inventory.tables.map((r) => ({ ...r, kind: 'r' })),
        ...inventory.sequences.map((r) => ({ ...r, kind: 'S' })),
      ],
      counts: counted.tables,
      sequences,
      seconds: { structure, volume, sequences: seqSeconds },
    };
  } catch (error) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw error;
  }
}

/** The structure, volume and sequences rungs of a restored target against the manifest. */
export function proveAgainstManifest(manifest: Manifest, state: RestoredState): Rung[] {
  return [
    evaluateStructure(manifest, state, state.seconds.structure),
    evaluateVolume(manifest.tables, state.counts, state.seconds.volume),
    evaluateSequences(manifest.sequences, state.sequences, state.seconds.sequences),
  ];
}

/** Connects to `url`, reads the restored scope and proves it against the manifest. */
export async function proveTarget(
  url: string,
  manifest: Manifest,
  options: { scope: DumpScope; appName: string; statementTimeoutMs: number },
): Promise<{ rungs: Rung[]; state: RestoredState }> {
  return withPgClient(
    url,
    options.appName,
    async (client) => {
      try {
        const state = await readRestoredState(client, options.scope, options.statementTimeoutMs);
        return { rungs: proveAgainstManifest(manifest, state), state };
      } catch (error) {
        throw isAppError(error) ? error : pgError(error, 'validating the restored target');
      }
    },
    'connecting to the target for validation',
  );
}
