// Generates the README's configuration, events and errors tables from the code (the config schema, the
// event catalogue, the error table), so the documentation cannot drift: `npm run docs` rewrites them and
// a test fails when the README differs.
import { readFile, writeFile } from 'node:fs/promises';
import { VARS } from '../shared/config.js';
import { ERROR_TABLE } from '../shared/errors.js';
import { EVENT_TYPES, type EventType } from '../shared/events/envelope.js';

export const EVENT_DOCS: Record<EventType, { from: string; when: string; to: string }> = {
  'flux.backup.requested': {
    from: 'a scheduler, restore (safety backup)',
    when: 'asks for a backup of a project',
    to: 'dump',
  },
  'flux.backup.created': {
    from: 'dump',
    when: 'a backup is complete (manifest written)',
    to: 'replicate, verify',
  },
  'flux.backup.failed': { from: 'dump', when: 'a backup failed (reason, error)', to: 'operators' },
  'flux.backup.deleted': { from: 'dump', when: 'retention removed a backup', to: 'operators' },
  'flux.backup.replicated': {
    from: 'replicate',
    when: 'the offsite copy was re-hashed and matches',
    to: 'verify (if configured)',
  },
  'flux.backup.replication_failed': {
    from: 'replicate',
    when: 'the copy could not be proven, or a different offsite copy exists (conflict)',
    to: 'operators',
  },
  'flux.backup.artifact_invalid': {
    from: 'replicate',
    when: 'the rotating re-hash found a local dump that no longer matches its manifest',
    to: 'operators',
  },
  'flux.backup.integrity_finding': {
    from: 'any function reading the catalog',
    when: 'a manifest or receipt does not authenticate or names another backup than its path (counted as absent)',
    to: 'operators',
  },
  'flux.backup.offsite_invalid': {
    from: 'replicate',
    when: 'the rotating re-hash found an offsite copy missing or not matching its manifest',
    to: 'operators',
  },
  'flux.backup.offsite_expired': {
    from: 'replicate',
    when: 'offsite retention removed a copy (FLUX_OFFSITE_KEEP_COUNT / _DAYS)',
    to: 'operators',
  },
  'flux.backup.verified': {
    from: 'verify',
    when: 'a restore into a disposable Postgres passed every rung',
    to: 'operators',
  },
  'flux.backup.verify_failed': {
    from: 'verify',
    when: 'a rung failed: the backup is not restorable as recorded',
    to: 'operators',
  },
  'flux.backup.unverifiable': {
    from: 'verify',
    when: 'verification could not run (no Docker, image missing, version) — never a pass',
    to: 'operators',
  },
  'flux.tenant.probe_failed': {
    from: 'probe',
    when: 'a tenant API failed N consecutive probes',
    to: 'operators',
  },
  'flux.tenant.probe_recovered': {
    from: 'probe',
    when: 'a failed tenant API passed N consecutive probes',
    to: 'operators',
  },
  'flux.migrate.started': {
    from: 'migrate',
    when: 'before any data moves (the gateway’s drain signal with lockWrites)',
    to: 'gateway, operators',
  },
  'flux.migrate.completed': {
    from: 'migrate',
    when: 'the tenant moved and validated',
    to: 'probe, operators',
  },
  'flux.migrate.failed': {
    from: 'migrate',
    when: 'a phase failed; the target was rolled back',
    to: 'operators',
  },
  'flux.restore.started': {
    from: 'restore',
    when: 'a restore begins to change a server (in_place: the drain signal, lockWrites)',
    to: 'gateway, operators',
  },
  'flux.restore.completed': {
    from: 'restore',
    when: 'the restored copy is proven against the manifest (and live, in_place)',
    to: 'gateway, operators',
  },
  'flux.restore.failed': {
    from: 'restore',
    when: 'a stage failed or the process died; the live copy was put back (rolledBack)',
    to: 'gateway, operators',
  },
  'flux.restore.previous_dropped': {
    from: 'restore',
    when: 'the copy an in-place restore set aside was dropped (expired or asked)',
    to: 'operators',
  },
  'flux.cluster.placement_finding': {
    from: 'dump',
    when: 'a look at the clusters found a tenant out of place or an orphan schema (`open`), or no longer finds it (`cleared`)',
    to: 'operators',
  },
  'flux.cluster.preflight_passed': {
    from: 'dump',
    when: 'a maintenance preflight of a cluster passed (the report attached)',
    to: 'operators, change tickets',
  },
  'flux.cluster.preflight_failed': {
    from: 'dump',
    when: 'a maintenance preflight failed or could not tell (the report names each problem)',
    to: 'operators, change tickets',
  },
};

const cell = (s: string) => s.replaceAll('|', '\\|');

type Schema = { safeParse(v: unknown): { success: boolean; data?: unknown } };

/** The raw default of a schema that parses a string into something else (zod's pipe of a default into a transform). */
function rawDefaultOf(schema: Schema): string | undefined {
  const def = (
    schema as { _zod?: { def?: { type?: string; in?: { _zod?: { def?: Record<string, unknown> } } } } }
  )._zod?.def;
  const input = def?.type === 'pipe' ? def.in?._zod?.def : undefined;
  return input?.type === 'default' && typeof input.defaultValue === 'string' ? input.defaultValue : undefined;
}

/**
 * The default as an operator would write it in the environment: for a variable parsed into a structure
 * (ranges, lists, booleans) the string the schema starts from, so the cell can be pasted as it is.
 */
export function defaultOf(schema: Schema): string {
  const raw = rawDefaultOf(schema);
  if (raw !== undefined) return raw === '' ? '' : `\`${raw}\``;
  const parsed = schema.safeParse(undefined);
  if (!parsed.success || parsed.data === undefined) return '';
  return `\`${String(parsed.data)}\``;
}

export function configTable(): string {
  const rows = Object.entries(VARS).map(([name, spec]) => {
    const s = spec as {
      schema: Schema;
      description: string;
      secret?: boolean;
      embedded?: string;
    };
    const embedded = s.embedded ? ` (npm start: \`${s.embedded}\`)` : '';
    return `| \`${name}\` | ${defaultOf(s.schema)}${embedded} | ${s.secret ? 'yes' : ''} | ${cell(s.description)} |`;
  });
  return ['| variable | default | secret | meaning |', '| --- | --- | --- | --- |', ...rows].join('\n');
}

export function eventsTable(): string {
  const rows = EVENT_TYPES.map(
    (t) => `| \`${t}\` | ${EVENT_DOCS[t].from} | ${cell(EVENT_DOCS[t].when)} | ${EVENT_DOCS[t].to} |`,
  );
  return ['| type | emitted by | when | acted on by |', '| --- | --- | --- | --- |', ...rows].join('\n');
}

export function errorsTable(): string {
  const rows = Object.entries(ERROR_TABLE).map(
    ([code, e]) => `| \`${code}\` | ${e.status} | ${e.exit} | ${cell(e.summary)} |`,
  );
  return ['| code | HTTP | CLI exit | meaning |', '| --- | --- | --- | --- |', ...rows].join('\n');
}

export const TABLES = { config: configTable, events: eventsTable, errors: errorsTable } as const;

/** Replaces the text between `<!-- table:NAME -->` and `<!-- /table:NAME -->` with the generated table. */
export function renderTables(readme: string): string {
  let out = readme;
  for (const [name, make] of Object.entries(TABLES)) {
    const re = new RegExp(`(<!-- table:${name} -->)[\\s\\S]*?(<!-- /table:${name} -->)`);
    out = out.replace(re, (_all, start: string, end: string) => `${start}\n${make()}\n${end}`);
  }
  return out;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const readme = await readFile('README.md', 'utf8');
  await writeFile('README.md', renderTables(readme));
  process.stdout.write('README tables regenerated\n');
}
