// Each rung in both directions: the broken input fires its finding, the healthy one stays silent.
import { describe, expect, it } from 'vitest';
import { tenantText } from '../pg/restore-role.js';
import {
  completeRungs,
  errorLines,
  evaluateArchive,
  evaluateArtifact,
  evaluateIntegrity,
  evaluateRestore,
  evaluateSequences,
  evaluateStructure,
  evaluateVolume,
  outcomeOf,
  rung,
  sequencePosition,
} from './rungs.js';

const SHA = 'a'.repeat(64);

describe('artifact', () => {
  it('passes the recorded size and hash, fires on a truncated or altered file', () => {
    const expected = { sizeBytes: 100, sha256: SHA };
    expect(evaluateArtifact(expected, { sizeBytes: 100, sha256: SHA }, 0.5)).toMatchObject({
      result: 'passed',
      code: 'ok',
      seconds: 0.5,
    });
    expect(evaluateArtifact(expected, { sizeBytes: 60, sha256: SHA }, 0)).toMatchObject({
      result: 'failed',
      code: 'size_mismatch',
    });
    expect(evaluateArtifact(expected, { sizeBytes: 100, sha256: 'b'.repeat(64) }, 0)).toMatchObject({
      result: 'failed',
      code: 'sha256_mismatch',
    });
  });
});

describe('archive', () => {
  const list =
    ';\n; Archive created at …\n3; 2615 16385 SCHEMA - t_x_api\n215; 1259 16386 TABLE t_x_api items\n';
  it('passes a readable table of contents', () => {
    expect(evaluateArchive({ exitCode: 0, stdout: list, stderr: '' }, 0)).toMatchObject({
      result: 'passed',
      details: { tocEntries: 2 },
    });
  });
  it('fires on an unreadable archive', () => {
    const r = evaluateArchive(
      { exitCode: 1, stdout: '', stderr: 'pg_restore: error: could not read from input file: end of file\n' },
      0,
    );
    expect(r).toMatchObject({ result: 'failed', code: 'archive_unreadable' });
    expect(r.message).toMatch(/end of file/);
  });
  it('an archive version the sandbox cannot read is not a failure of the backup', () => {
    expect(
      evaluateArchive(
        { exitCode: 1, stdout: '', stderr: 'pg_restore: error: unsupported version (1.15) in file header\n' },
        0,
      ),
    ).toMatchObject({ result: 'could_not_verify', code: 'archive_version_unsupported' });
  });
});

describe('restore', () => {
  const up = { isServerGone: false };
  it('passes a clean exit, whatever the restore printed', () => {
    expect(evaluateRestore({ exitCode: 0, stderr: '' }, 1, up)).toMatchObject({ result: 'passed' });
    expect(
      evaluateRestore({ exitCode: 0, stderr: 'pg_restore: warning: something harmless\n' }, 1, up),
    ).toMatchObject({ result: 'passed' });
    // A tenant's function can RAISE NOTICE anything: text never fails a restore that succeeded.
    expect(
      evaluateRestore(
        { exitCode: 0, stderr: 'NOTICE:  ERROR: fake failure\npg_restore: error: fake\n' },
        1,
        up,
      ),
    ).toMatchObject({ result: 'passed' });
  });
  it("a non-zero exit fails, quoting what it reported as the backup's text", () => {
    const stderr =
      'pg_restore: while PROCESSING TOC:\npg_restore: from TOC entry 215; 1259 16386 POLICY orders_owner\n' +
      'pg_restore: error: could not execute query: ERROR:  role "reporting" does not exist\n';
    const r = evaluateRestore({ exitCode: 1, stderr }, 1, up);
    expect(r).toMatchObject({ result: 'failed', code: 'restore_errors', details: { tenantText: true } });
    expect(r.message).toMatch(
      /«pg_restore: error: could not execute query: ERROR: {2}role "reporting" does not exist»/,
    );
    expect(evaluateRestore({ exitCode: 1, stderr: '' }, 1, up)).toMatchObject({
      result: 'failed',
      code: 'restore_exit_nonzero',
    });
  });
  it('tenant text that reads like a dying server still fails a failed restore', () => {
    // A tenant function raising exactly what libpq prints when the server goes away.
    const lie =
      'pg_restore: error: could not execute query: ERROR:  server closed the connection unexpectedly\n' +
      '\tThis probably means the server terminated abnormally\n' +
      'FATAL:  terminating connection because of crash of another server process\n';
    expect(evaluateRestore({ exitCode: 1, stderr: lie }, 1, up)).toMatchObject({
      result: 'failed',
      code: 'restore_errors',
    });
  });
  it('a sandbox that failed under the restore could not verify it: never a failed backup', () => {
    const r = evaluateRestore({ exitCode: 1, stderr: 'anything' }, 1, { isServerGone: true });
    expect(r).toMatchObject({ result: 'could_not_verify', code: 'sandbox_server_gone' });
    expect(r.message).toMatch(/says nothing about the backup/);
    // pg_restore itself killed (SIGKILL: 128 + 9), or an exit the engine never recorded.
    expect(evaluateRestore({ exitCode: 137, stderr: '' }, 1, up)).toMatchObject({
      result: 'could_not_verify',
      code: 'restore_interrupted',
    });
    expect(evaluateRestore({ exitCode: null, stderr: '' }, 1, up)).toMatchObject({
      result: 'could_not_verify',
      code: 'restore_interrupted',
    });
  });
  it('bounds and flattens quoted tenant text', () => {
    expect(tenantText('a\u001b[31mred\u0007', 100)).toBe('«a [31mred »');
    expect(tenantText('x'.repeat(50), 10)).toBe(`«${'x'.repeat(10)}…»`);
  });
  it('finds error lines among the noise', () => {
    expect(
      errorLines(
        'pg_restore: creating TABLE\nERROR:  boom\npg_restore: error: bad\npsql:x:1: FATAL:  gone\n',
      ),
    ).toEqual(['ERROR:  boom', 'pg_restore: error: bad', 'psql:x:1: FATAL:  gone']);
  });
});

describe('structure', () => {
  const manifest = {
    schemas: ['t_x_api'],
    tables: [
      { schema: 't_x_api', name: 'customers', rows: 3 },
      { schema: 't_x_api', name: 'orders', rows: 5 },
    ],
  };
  const relations = [
    { schema: 't_x_api', name: 'customers', kind: 'r' },
    { schema: 't_x_api', name: 'orders', kind: 'r' },
    { schema: 't_x_api', name: 'orders_id_seq', kind: 'S' },
  ];
  it('passes when every schema and table is there (extras are fine)', () => {
    expect(
      evaluateStructure(
        manifest,
        {
          schemas: ['t_x_api', 'auth'],
          relations: [...relations, { schema: 't_x_api', name: 'extra', kind: 'r' }],
        },
        0,
      ),
    ).toMatchObject({ result: 'passed' });
  });
  it('fires on a missing table or schema', () => {
    expect(
      evaluateStructure(manifest, { schemas: ['t_x_api'], relations: relations.slice(1) }, 0),
    ).toMatchObject({
      result: 'failed',
      code: 'missing_tables',
      details: { missingTables: ['t_x_api.customers'] },
    });
    expect(evaluateStructure(manifest, { schemas: [], relations: [] }, 0)).toMatchObject({
      result: 'failed',
      code: 'missing_schemas',
    });
  });
  it('a sequence of the same name does not count as a table', () => {
    expect(
      evaluateStructure(
        { schemas: ['s'], tables: [{ schema: 's', name: 'x', rows: 0 }] },
        { schemas: ['s'], relations: [{ schema: 's', name: 'x', kind: 'S' }] },
        0,
      ),
    ).toMatchObject({ result: 'failed', code: 'missing_tables' });
  });
});

describe('volume', () => {
  const expected = [
    { schema: 's', name: 'a', rows: 10 },
    { schema: 's', name: 'b', rows: 0 },
  ];
  it('passes exact counts and fires on drift in either direction', () => {
    expect(
      evaluateVolume(
        expected,
        [
          { schema: 's', name: 'a', rows: 10 },
          { schema: 's', name: 'b', rows: 0 },
        ],
        0,
      ),
    ).toMatchObject({ result: 'passed', details: { rows: 10 } });
    const drift = evaluateVolume(
      expected,
      [
        { schema: 's', name: 'a', rows: 9 },
        { schema: 's', name: 'b', rows: 1 },
      ],
      0,
    );
    expect(drift).toMatchObject({ result: 'failed', code: 'row_count_mismatch' });
    expect(drift.details?.mismatches).toHaveLength(2);
  });
  it('an empty manifest is not applicable, not a failure', () => {
    expect(evaluateVolume([], [], 0)).toMatchObject({ result: 'not_applicable', code: 'no_tables' });
  });
});

describe('sequences', () => {
  const seq = (lastValue: string | null, isCalled: boolean, increment = '1') => ({
    schema: 's',
    name: 'q',
    lastValue,
    isCalled,
    increment,
  });
  it('orders positions along the sequence direction', () => {
    expect(sequencePosition(seq('1007', true), seq('1007', true))).toBe('equal');
    expect(sequencePosition(seq('1007', true), seq('1008', false))).toBe('equal');
    expect(sequencePosition(seq('1007', true), seq('1006', true))).toBe('behind');
    expect(sequencePosition(seq('1007', true), seq('1007', false))).toBe('behind');
    expect(sequencePosition(seq('1007', true), seq('1009', true))).toBe('ahead');
    expect(sequencePosition(seq('-5', true), seq('-4', true, '-1'))).toBe('behind');
    expect(sequencePosition(seq('-5', true), seq('-6', true, '-1'))).toBe('ahead');
    expect(sequencePosition(seq('9223372036854775806', true), seq('9223372036854775807', true))).toBe(
      'ahead',
    );
  });
  it('passes equal values, fires on one behind or missing, tolerates one ahead', () => {
    const expected = [{ schema: 's', name: 'q', lastValue: '1007', isCalled: true }];
    expect(evaluateSequences(expected, [seq('1007', true)], 0)).toMatchObject({
      result: 'passed',
      code: 'ok',
    });
    expect(evaluateSequences(expected, [seq('1001', true)], 0)).toMatchObject({
      result: 'failed',
      code: 'sequence_behind',
    });
    expect(evaluateSequences(expected, [], 0)).toMatchObject({ result: 'failed', code: 'missing_sequences' });
    expect(evaluateSequences(expected, [seq('1010', true)], 0)).toMatchObject({
      result: 'passed',
      code: 'sequence_ahead',
    });
    expect(evaluateSequences([], [], 0)).toMatchObject({ result: 'not_applicable', code: 'no_sequences' });
  });
});

describe('integrity', () => {
  it('passes clean indexes, fires on one amcheck rejects', () => {
    expect(evaluateIntegrity([{ schema: 's', index: 'a_pkey', error: null }], 0)).toMatchObject({
      result: 'passed',
    });
    expect(
      evaluateIntegrity(
        [
          { schema: 's', index: 'a_pkey', error: null },
          { schema: 's', index: 'b_idx', error: 'item order invariant violated for index "b_idx"' },
        ],
        0,
      ),
    ).toMatchObject({ result: 'failed', code: 'index_corrupt' });
    expect(evaluateIntegrity([], 0)).toMatchObject({ result: 'not_applicable' });
  });
});

describe('outcome', () => {
  const passed = (name: Parameters<typeof rung>[0]) => rung(name, 'passed', 'ok', 0);
  const all = completeRungs(
    {
      artifact: passed('artifact'),
      archive: passed('archive'),
      restore: passed('restore'),
      structure: passed('structure'),
      volume: rung('volume', 'not_applicable', 'no_tables', 0),
      sequences: rung('sequences', 'not_applicable', 'no_sequences', 0),
      integrity: rung('integrity', 'not_applicable', 'no_indexes', 0),
    },
    { code: 'blocked', message: '' },
  );

  it('verified when every rung passed or did not apply (the empty tenant)', () => {
    expect(outcomeOf(all)).toEqual({ status: 'restore_verified', reason: 'ok' });
  });

  it('a failed rung fails the backup, whatever else happened', () => {
    const failed = completeRungs(
      { artifact: passed('artifact'), archive: rung('archive', 'failed', 'archive_unreadable', 0, 'eof') },
      { code: 'blocked', message: 'not run' },
    );
    expect(failed.map((r) => r.rung)).toEqual([
      'artifact',
      'archive',
      'restore',
      'structure',
      'volume',
      'sequences',
      'integrity',
    ]);
    expect(outcomeOf(failed)).toMatchObject({ status: 'restore_failed', reason: 'archive_unreadable' });
    expect(outcomeOf(failed, { reason: 'timeout', error: 'x' }).status).toBe('restore_failed');
  });

  it('could not verify is never a pass and never a failure', () => {
    expect(
      outcomeOf(completeRungs({}, { code: 'docker_unavailable', message: 'x' }), {
        reason: 'docker_unavailable',
        error: 'engine down',
      }),
    ).toEqual({ status: 'unverifiable', reason: 'docker_unavailable', error: 'engine down' });
    const blocked = all.map((r) =>
      r.rung === 'archive' ? rung('archive', 'could_not_verify', 'archive_version_unsupported', 0) : r,
    );
    expect(outcomeOf(blocked)).toMatchObject({
      status: 'unverifiable',
      reason: 'archive_version_unsupported',
    });
  });

  it('the optional integrity rung that could not run does not block a pass', () => {
    const noAmcheck = all.map((r) =>
      r.rung === 'integrity' ? rung('integrity', 'could_not_verify', 'amcheck_unavailable', 0) : r,
    );
    expect(outcomeOf(noAmcheck).status).toBe('restore_verified');
  });
});
