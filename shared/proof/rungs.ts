// Rung evaluation: pure functions from what the sandbox reported to a rung result with a stable finding
// code, and from the rungs to the verification outcome. Unverifiable is never a pass and never a failure.
import type { Manifest, Rung, RungName, RungResult, VerifyOutcome } from '../catalog/records.js';
import { RUNG_NAMES } from '../catalog/records.js';
import { tenantText } from '../pg/restore-role.js';

/** Stable finding codes, per rung (what tests, alerts and dashboards key on). */
export const FINDINGS = {
  ok: 'ok',
  blocked: 'blocked',
  artifactMissing: 'artifact_missing',
  sizeMismatch: 'size_mismatch',
  sha256Mismatch: 'sha256_mismatch',
  archiveUnreadable: 'archive_unreadable',
  notCustomArchive: 'not_custom_archive',
  archiveVersionUnsupported: 'archive_version_unsupported',
  restoreErrors: 'restore_errors',
  restoreExitNonzero: 'restore_exit_nonzero',
  sandboxServerGone: 'sandbox_server_gone',
  restoreInterrupted: 'restore_interrupted',
  missingSchemas: 'missing_schemas',
  missingTables: 'missing_tables',
  rowCountMismatch: 'row_count_mismatch',
  noTables: 'no_tables',
  sequenceBehind: 'sequence_behind',
  sequenceAhead: 'sequence_ahead',
  missingSequences: 'missing_sequences',
  noSequences: 'no_sequences',
  indexCorrupt: 'index_corrupt',
  noIndexes: 'no_indexes',
  disabled: 'disabled',
  amcheckUnavailable: 'amcheck_unavailable',
} as const;

/** Optional rungs inform but never decide the outcome when they could not run. */
const OPTIONAL_RUNGS: ReadonlySet<RungName> = new Set(['integrity']);

export function rung(
  name: RungName,
  result: RungResult,
  code: string,
  seconds: number,
  message?: string,
  details?: Record<string, unknown>,
): Rung {
  return {
    rung: name,
    result,
    code,
    seconds: Math.max(0, Number(seconds.toFixed(3))),
    ...(message ? { message } : {}),
    ...(details ? { details } : {}),
  };
}

const MAX_LISTED = 20;
function listed(items: readonly string[]): string {
  return items.length > MAX_LISTED
    ? `${items.slice(0, MAX_LISTED).join(', ')} and ${items.length - MAX_LISTED} more`
    : items.join(', ');
}

const qualified = (t: { schema: string; name: string }) => `${t.schema}.${t.name}`;

export function evaluateArtifact(
  expected: { sizeBytes: number; sha256: string },
  actual: { sizeBytes: number; sha256: string },
  seconds: number,
): Rung {
  if (actual.sizeBytes !== expected.sizeBytes) {
    return rung(
      'artifact',
      'failed',
      FINDINGS.sizeMismatch,
      seconds,
      `the dump is ${actual.sizeBytes} B but the manifest recorded ${expected.sizeBytes} B (truncated or replaced)`,
      { expectedBytes: expected.sizeBytes, actualBytes: actual.sizeBytes },
    );
  }
  if (actual.sha256 !== expected.sha256) {
    return rung(
      'artifact',
      'failed',
      FINDINGS.sha256Mismatch,
      seconds,
      `the dump's SHA-256 ${actual.sha256.slice(0, 12)}… differs from the manifest's ${expected.sha256.slice(0, 12)}… (the bytes changed after the dump)`,
      { expectedSha256: expected.sha256, actualSha256: actual.sha256 },
    );
  }
  return rung('artifact', 'passed', FINDINGS.ok, seconds, undefined, {
    sizeBytes: actual.sizeBytes,
    sha256: actual.sha256,
  });
}

const UNSUPPORTED_VERSION_RE = /unsupported version \((\d+)\.(\d+)\) in file header/i;

/** The error lines pg_restore (or a server it talks to) printed, without the noise around them. */
export function errorLines(stderr: string): string[] {
  return stderr
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => /(^|\s)(error|fatal|panic):/i.test(l) || /^ERROR:/.test(l));
}

/** `pg_restore --list`: exit code and stderr; a version it cannot read is the sandbox's limit, not the backup's. */
export function evaluateArchive(
  result: { exitCode: number | null; stdout: string; stderr: string },
  seconds: number,
): Rung {
  if (UNSUPPORTED_VERSION_RE.test(result.stderr)) {
    return rung(
      'archive',
      'could_not_verify',
      FINDINGS.archiveVersionUnsupported,
      seconds,
      `the sandbox's pg_restore cannot read this archive version: ${errorLines(result.stderr)[0] ?? result.stderr.trim()}`,
    );
  }
  const errors = errorLines(result.stderr);
  if (result.exitCode !== 0 || errors.length > 0) {
    return rung(
      'archive',
      'failed',
      FINDINGS.archiveUnreadable,
      seconds,
      `pg_restore --list ${result.exitCode === 0 ? 'reported errors' : `exited ${result.exitCode}`}: ${listed(errors.slice(0, 3)) || result.stderr.trim().slice(-300) || 'no error output'}`,
    );
  }
  const entries = result.stdout.split('\n').filter((l) => /^\d+;/.test(l)).length;
  return rung('archive', 'passed', FINDINGS.ok, seconds, undefined, { tocEntries: entries });
}

/**
 * The restore, judged on what the driver observed: whether the sandbox server stayed up (a session held
 * open through the restore, a container still running) and pg_restore's exit. A sandbox that failed under
 * the restore, or a pg_restore killed by a signal, says nothing about the backup: that restore could not
 * verify it. Otherwise exit 0 passes and any other exit fails. What pg_restore printed is quoted in the
 * finding and decides nothing: a tenant's function can print anything, including what a dying server says.
 */
export function evaluateRestore(
  result: { exitCode: number | null; stderr: string },
  seconds: number,
  observed: { isServerGone: boolean },
): Rung {
  const errors = errorLines(result.stderr)
    .slice(0, 20)
    .map((line) => tenantText(line, 300));
  if (observed.isServerGone) {
    return rung(
      'restore',
      'could_not_verify',
      FINDINGS.sandboxServerGone,
      seconds,
      'the sandbox server went away during the restore (its sessions ended): killed, or out of memory ' +
        '(FLUX_VERIFY_MEMORY_MB limits sandboxes); this says nothing about the backup: verify it again',
      { exitCode: result.exitCode },
    );
  }
  if (result.exitCode === null || result.exitCode >= 128) {
    const how =
      result.exitCode === null
        ? 'ended without a recorded exit code'
        : `was killed by signal ${result.exitCode - 128} (exit ${result.exitCode})`;
    return rung(
      'restore',
      'could_not_verify',
      FINDINGS.restoreInterrupted,
      seconds,
      `pg_restore ${how}: the sandbox stopped it (out of memory?), not the backup; verify it again`,
      { exitCode: result.exitCode },
    );
  }
  if (result.exitCode === 0) return rung('restore', 'passed', FINDINGS.ok, seconds);
  if (errors.length > 0) {
    return rung(
      'restore',
      'failed',
      FINDINGS.restoreErrors,
      seconds,
      `pg_restore exited ${result.exitCode}; it reported (quoted, the text may come from the backup's own objects): ${listed(errors.slice(0, 5))}`,
      { exitCode: result.exitCode, errors, tenantText: true },
    );
  }
  return rung(
    'restore',
    'failed',
    FINDINGS.restoreExitNonzero,
    seconds,
    `pg_restore exited ${result.exitCode}: ${tenantText(result.stderr.trim().slice(-300)) || 'no error output'}`,
    { exitCode: result.exitCode, tenantText: true },
  );
}

export interface RestoredRelation {
  schema: string;
  name: string;
  /** pg_class.relkind: r, p (tables), S (sequence). */
  kind: string;
}

/** Every schema and table the manifest recorded must exist in the restore (extras are fine). */
export function evaluateStructure(
  manifest: Pick<Manifest, 'schemas' | 'tables'>,
  restored: { schemas: readonly string[]; relations: readonly RestoredRelation[] },
  seconds: number,
): Rung {
  const schemas = new Set(restored.schemas);
  const tables = new Set(restored.relations.filter((r) => r.kind !== 'S').map(qualified));
  const missingSchemas = manifest.schemas.filter((s) => !schemas.has(s));
  const missingTables = manifest.tables.map(qualified).filter((t) => !tables.has(t));
  if (missingSchemas.length > 0) {
    return rung(
      'structure',
      'failed',
      FINDINGS.missingSchemas,
      seconds,
      `schemas recorded in the manifest are missing after the restore: ${listed(missingSchemas)}`,
      { missingSchemas, missingTables },
    );
  }
  if (missingTables.length > 0) {
    return rung(
      'structure',
      'failed',
      FINDINGS.missingTables,
      seconds,
      `tables recorded in the manifest are missing after the restore: ${listed(missingTables)}`,
      { missingTables },
    );
  }
  return rung('structure', 'passed', FINDINGS.ok, seconds, undefined, {
    schemas: manifest.schemas.length,
    tables: manifest.tables.length,
  });
}

/** Exact row counts of the restore equal the counts taken in the dump's snapshot. */
export function evaluateVolume(
  expected: Manifest['tables'],
  restored: ReadonlyArray<{ schema: string; name: string; rows: number }>,
  seconds: number,
): Rung {
  if (expected.length === 0) {
    return rung('volume', 'not_applicable', FINDINGS.noTables, seconds, 'the manifest records no tables');
  }
  const counts = new Map(restored.map((r) => [qualified(r), r.rows]));
  const mismatches = expected
    .filter((t) => counts.has(qualified(t)) && counts.get(qualified(t)) !== t.rows)
    .map((t) => ({ table: qualified(t), expected: t.rows, restored: counts.get(qualified(t))! }));
  if (mismatches.length > 0) {
    return rung(
      'volume',
      'failed',
      FINDINGS.rowCountMismatch,
      seconds,
      `row counts differ from the manifest: ${listed(mismatches.map((m) => `${m.table} ${m.restored} (manifest ${m.expected})`))}`,
      { mismatches: mismatches.slice(0, 100) },
    );
  }
  const rows = expected.reduce((n, t) => n + t.rows, 0);
  return rung('volume', 'passed', FINDINGS.ok, seconds, undefined, { tables: expected.length, rows });
}

export interface RestoredSequence {
  schema: string;
  name: string;
  lastValue: string | null;
  isCalled: boolean;
  increment: string;
}

/**
 * Position of a sequence relative to the manifest: how far along its direction it has moved. Values are
 * bigint text; nextval after (v, called) returns v+inc, after (v, not called) returns v.
 */
export function sequencePosition(
  expected: { lastValue: string | null; isCalled: boolean },
  restored: { lastValue: string | null; isCalled: boolean; increment: string },
): 'equal' | 'ahead' | 'behind' {
  const inc = BigInt(restored.increment || '1');
  const next = (s: { lastValue: string | null; isCalled: boolean }) => {
    const v = BigInt(s.lastValue ?? '0');
    return s.isCalled ? v + inc : v;
  };
  const a = next(restored);
  const b = next(expected);
  if (a === b) return 'equal';
  const ahead = inc >= 0n ? a > b : a < b;
  return ahead ? 'ahead' : 'behind';
}

/**
 * Sequence values equal the manifest's. Sequences are not transactional: pg_dump reads them after the
 * snapshot, so under concurrent writes a restored sequence may be ahead of the manifest — harmless (gaps);
 * one behind would hand out ids that already exist, and fails.
 */
export function evaluateSequences(
  expected: Manifest['sequences'],
  restored: readonly RestoredSequence[],
  seconds: number,
): Rung {
  if (expected.length === 0) {
    return rung(
      'sequences',
      'not_applicable',
      FINDINGS.noSequences,
      seconds,
      'the manifest records no sequences',
    );
  }
  const byName = new Map(restored.map((s) => [qualified(s), s]));
  const missing = expected.filter((s) => !byName.has(qualified(s))).map(qualified);
  if (missing.length > 0) {
    return rung(
      'sequences',
      'failed',
      FINDINGS.missingSequences,
      seconds,
      `sequences recorded in the manifest are missing after the restore: ${listed(missing)}`,
      { missing },
    );
  }
  const behind: Array<Record<string, unknown>> = [];
  const ahead: Array<Record<string, unknown>> = [];
  for (const s of expected) {
    const r = byName.get(qualified(s))!;
    const position = sequencePosition(s, r);
    const entry = {
      sequence: qualified(s),
      expected: `${s.lastValue}${s.isCalled ? '' : ' (not called)'}`,
      restored: `${r.lastValue}${r.isCalled ? '' : ' (not called)'}`,
    };
    if (position === 'behind') behind.push(entry);
    if (position === 'ahead') ahead.push(entry);
  }
  if (behind.length > 0) {
    return rung(
      'sequences',
      'failed',
      FINDINGS.sequenceBehind,
      seconds,
      `sequences restored behind the manifest (new rows would collide with existing ids): ${listed(behind.map((b) => `${b.sequence} at ${b.restored}, manifest ${b.expected}`))}`,
      { behind: behind.slice(0, 100) },
    );
  }
  if (ahead.length > 0) {
    return rung(
      'sequences',
      'passed',
      FINDINGS.sequenceAhead,
      seconds,
      `${ahead.length} sequence(s) restored ahead of the manifest (advanced while pg_dump ran; harmless)`,
      { ahead: ahead.slice(0, 100) },
    );
  }
  return rung('sequences', 'passed', FINDINGS.ok, seconds, undefined, { sequences: expected.length });
}

export interface IndexCheck {
  schema: string;
  index: string;
  error: string | null;
}

/** amcheck's bt_index_check on every restored btree index of the manifest's schemas. */
export function evaluateIntegrity(checks: readonly IndexCheck[], seconds: number): Rung {
  if (checks.length === 0) {
    return rung('integrity', 'not_applicable', FINDINGS.noIndexes, seconds, 'no btree indexes to check');
  }
  const broken = checks.filter((c) => c.error !== null);
  if (broken.length > 0) {
    return rung(
      'integrity',
      'failed',
      FINDINGS.indexCorrupt,
      seconds,
      `amcheck found ${broken.length} inconsistent index(es): ${listed(broken.map((b) => `${b.schema}.${b.index}: ${b.error}`))}`,
      { broken: broken.slice(0, 50) },
    );
  }
  return rung('integrity', 'passed', FINDINGS.ok, seconds, undefined, { indexes: checks.length });
}

/** Fills the rungs that did not run (after a failure, or when the verification stopped) in canonical order. */
export function completeRungs(
  done: Partial<Record<RungName, Rung>>,
  missing: { code: string; message: string },
): Rung[] {
  return RUNG_NAMES.map(
    (name) => done[name] ?? rung(name, 'could_not_verify', missing.code, 0, missing.message),
  );
}

export interface Outcome {
  status: VerifyOutcome;
  /** A bounded reason: `ok`, the first failed rung's code, or why verification could not run. */
  reason: string;
  error?: string;
}

/**
 * A failed rung fails the backup; otherwise a required rung that could not run makes it unverifiable;
 * otherwise it is verified. `unverifiable` carries an explicit reason (engine down, image missing…).
 */
export function outcomeOf(rungs: readonly Rung[], unverifiable?: { reason: string; error: string }): Outcome {
  const failed = rungs.find((r) => r.result === 'failed');
  if (failed) {
    return {
      status: 'restore_failed',
      reason: failed.code,
      error: `${failed.rung}: ${failed.message ?? failed.code}`,
    };
  }
  if (unverifiable) return { status: 'unverifiable', reason: unverifiable.reason, error: unverifiable.error };
  const blocked = rungs.find((r) => r.result === 'could_not_verify' && !OPTIONAL_RUNGS.has(r.rung));
  if (blocked) {
    return {
      status: 'unverifiable',
      reason: blocked.code,
      error: `${blocked.rung}: ${blocked.message ?? blocked.code}`,
    };
  }
  return { status: 'restore_verified', reason: 'ok' };
}
