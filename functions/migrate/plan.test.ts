import { describe, expect, it } from 'vitest';
import { stubRoles } from '../../shared/pg/platform-roles.js';
import {
  compareWithSnapshot,
  describeMismatches,
  isSameDatabase,
  neededMajor,
  type ServerIdentity,
  type TargetFacts,
  targetProblems,
  toolVersionProblems,
} from './plan.js';

// A minor every supported major has released since restrict_nonsystem_relation_kind (August 2024).
const tool = (major: number) => ({ version: `${major}.20`, major });

describe('toolVersionProblems', () => {
  it('accepts tools at or above the source major', () => {
    expect(toolVersionProblems({ pg_dump: tool(15), pg_restore: tool(15), psql: tool(15) }, 15, 15)).toEqual(
      [],
    );
    expect(toolVersionProblems({ pg_dump: tool(17), pg_restore: tool(17), psql: tool(17) }, 15, 16)).toEqual(
      [],
    );
  });

  it('refuses a pg_dump older than the source and names the major the image needs', () => {
    const problems = toolVersionProblems({ pg_dump: tool(14), pg_restore: tool(17), psql: tool(17) }, 15, 17);
    expect(problems.map((p) => p.tool)).toEqual(['pg_dump']);
    expect(problems[0]!.message).toMatch(/older than the source server \(major 15\)/);
    expect(problems[0]!.message).toMatch(/client tools of major 17.*rebuilt.*restart.*not enough/);
  });

  it('refuses a pg_restore older than the pg_dump that writes the archive', () => {
    const problems = toolVersionProblems({ pg_dump: tool(16), pg_restore: tool(15), psql: tool(16) }, 15, 15);
    expect(problems).toEqual([
      expect.objectContaining({ tool: 'pg_restore', message: expect.stringMatching(/cannot read archives/) }),
    ]);
  });

  it('has nothing to say without a known source major', () => {
    expect(toolVersionProblems({ pg_dump: tool(14) }, undefined, undefined)).toEqual([]);
  });

  it('refuses a pg_dump without protection from relations swapped for views, source known or not', () => {
    const unprotected = { version: '15.7', major: 15 };
    for (const source of [15, undefined]) {
      expect(toolVersionProblems({ pg_dump: unprotected, pg_restore: tool(15) }, source, source)).toEqual([
        expect.objectContaining({
          tool: 'pg_dump',
          message: expect.stringMatching(/15\.7 lacks restrict_nonsystem_relation_kind/),
        }),
      ]);
    }
  });

  it('neededMajor is the larger known major', () => {
    expect(neededMajor(15, 17)).toBe(17);
    expect(neededMajor(undefined, 16)).toBe(16);
    expect(neededMajor(undefined, undefined)).toBeUndefined();
  });
});

describe('stubRoles', () => {
  it('has the platform roles, the tenant role and policy roles once each', () => {
    const roles = stubRoles('t_0123456789ab_role', [
      'authenticated',
      't_0123456789ab_role',
      'auditor',
      'public',
    ]);
    expect(roles.map((r) => r.name)).toEqual([
      'anon',
      'authenticated',
      'service_role',
      'authenticator',
      't_0123456789ab_role',
      'auditor',
    ]);
    expect(roles.find((r) => r.name === 'service_role')).toMatchObject({
      options: 'NOLOGIN BYPASSRLS',
      needsSuperuser: true,
    });
  });
});

const source: ServerIdentity = {
  host: 'shared',
  port: 5432,
  database: 'flux',
  systemIdentifier: '111',
  serverVersionNum: 150004,
};

function target(overrides: Partial<TargetFacts> = {}): TargetFacts {
  return {
    server: {
      host: 'dedicated',
      port: 5432,
      database: 'bloom',
      systemIdentifier: '222',
      serverVersionNum: 150004,
    },
    user: { name: 'postgres', superuser: true, createrole: true },
    canCreateSchema: true,
    schema: { exists: false, relations: 0 },
    roles: {},
    auth: { schema: false, uid: false },
    extensions: { installed: [], available: [] },
    ...overrides,
  };
}

const names = { schema: 't_0123456789ab_api', tenantRole: 't_0123456789ab_role', policyRoles: [] };

describe('targetProblems', () => {
  it('has none for an empty dedicated database reached as a superuser', () => {
    expect(targetProblems(source, target(), names)).toEqual([]);
  });

  it('refuses an existing tenant schema, with the fix', () => {
    const problems = targetProblems(source, target({ schema: { exists: true, relations: 4 } }), names);
    expect(problems.map((p) => p.code)).toEqual(['target_schema_exists']);
    expect(problems[0]!.message).toMatch(/DROP SCHEMA t_0123456789ab_api CASCADE/);
  });

  it('refuses the source database itself and an older target major', () => {
    const same = target({ server: { ...source } });
    expect(targetProblems(source, same, names).map((p) => p.code)).toContain('same_database');
    const older = target({ server: { ...target().server, serverVersionNum: 140010 } });
    expect(targetProblems(source, older, names).map((p) => p.code)).toEqual(['target_older']);
  });

  it('refuses missing roles it may not create, and BYPASSRLS without superuser', () => {
    const plain = { name: 'app', superuser: false, createrole: false };
    expect(targetProblems(source, target({ user: plain }), names).map((p) => p.code)).toEqual([
      'cannot_create_roles',
    ]);
    const creator = { name: 'app', superuser: false, createrole: true };
    expect(targetProblems(source, target({ user: creator }), names).map((p) => p.code)).toEqual([
      'cannot_create_bypassrls',
    ]);
    const allThere = Object.fromEntries(
      ['anon', 'authenticated', 'service_role', 'authenticator', names.tenantRole].map((r) => [r, true]),
    );
    expect(targetProblems(source, target({ user: plain, roles: allThere }), names)).toEqual([]);
  });

  it('refuses a user without CREATE on the database', () => {
    expect(targetProblems(source, target({ canCreateSchema: false }), names).map((p) => p.code)).toEqual([
      'cannot_create_schema',
    ]);
  });

  it('isSameDatabase falls back to host and port without a system identifier', () => {
    const a = { ...source, systemIdentifier: 'unavailable' };
    expect(isSameDatabase(a, { ...a })).toBe(true);
    expect(isSameDatabase(a, { ...a, port: 5433 })).toBe(false);
    expect(isSameDatabase(source, { ...source, database: 'other' })).toBe(false);
  });
});

describe('compareWithSnapshot', () => {
  const snapshot = {
    tables: [
      { schema: 's', name: 'a', rows: 10 },
      { schema: 's', name: 'b', rows: 0 },
    ],
    sequences: [{ schema: 's', name: 'a_id_seq', lastValue: '10', isCalled: true }],
  };

  it('finds nothing when the target equals the snapshot', () => {
    expect(compareWithSnapshot(snapshot, structuredClone(snapshot))).toEqual([]);
  });

  it('finds row differences, missing and extra tables, and sequence drift', () => {
    const mismatches = compareWithSnapshot(snapshot, {
      tables: [
        { schema: 's', name: 'a', rows: 9 },
        { schema: 's', name: 'c', rows: 1 },
      ],
      sequences: [{ schema: 's', name: 'a_id_seq', lastValue: '10', isCalled: false }],
    });
    expect(mismatches.map((m) => `${m.kind}:${m.name}`)).toEqual([
      'rows:s.a',
      'missing_table:s.b',
      'unexpected_table:s.c',
      'sequence:s.a_id_seq',
    ]);
    expect(describeMismatches(mismatches, 2)).toBe(
      's.a has 9 rows, the snapshot 10; table s.b is missing (and 2 more)',
    );
  });

  it('finds a missing sequence', () => {
    expect(compareWithSnapshot(snapshot, { tables: snapshot.tables, sequences: [] })).toEqual([
      { kind: 'missing_sequence', name: 's.a_id_seq' },
    ]);
  });
});
