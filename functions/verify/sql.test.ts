import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLocalDriver } from '../../shared/sandbox/local.js';
import { parseLastJson, runSql } from '../../shared/sandbox/query.js';
import type { Sandbox } from '../../shared/sandbox/types.js';
import { preRestoreSql, type ReadBack, type ReadBackInput, readBackSql, rolesFor } from './sql.js';

const projectId = '550e8400-e29b-41d4-a716-446655440000';

describe('pre-restore roles', () => {
  it('stubs the platform roles, the tenant role and the manifest policy roles once each', () => {
    expect(rolesFor({ projectId, roles: ['authenticated', 'reporting_role'] })).toEqual([
      'anon',
      'authenticated',
      'service_role',
      'authenticator',
      't_550e8400e29b_role',
      'reporting_role',
    ]);
  });

  it('gives service_role BYPASSRLS, and a tenant export its auth schema with auth.uid()', () => {
    const tenant = preRestoreSql(
      {
        projectId,
        roles: [],
        kind: 'tenant_export',
        extensions: [{ name: 'citext', version: '1.6' }],
      },
      { amcheck: true },
    );
    expect(tenant).toMatch(/ALTER ROLE service_role BYPASSRLS/);
    expect(tenant).toMatch(/GRANT anon, authenticated, service_role, "t_550e8400e29b_role" TO authenticator/);
    expect(tenant).toMatch(/CREATE SCHEMA IF NOT EXISTS auth/);
    expect(tenant).toMatch(/FUNCTION auth\.uid\(\) RETURNS uuid/);
    expect(tenant).toMatch(/CREATE EXTENSION IF NOT EXISTS "citext"/);
    // A project database dump carries its own auth schema and extensions.
    const projectDb = preRestoreSql(
      {
        projectId,
        roles: [],
        kind: 'project_db',
        extensions: [{ name: 'citext', version: '1.6' }],
      },
      { amcheck: false },
    );
    expect(projectDb).not.toMatch(/SCHEMA IF NOT EXISTS auth|auth\.uid/);
    expect(projectDb).not.toMatch(/EXTENSION/);
    // amcheck goes in before the restore, in a schema of its own the tenant cannot create objects in.
    expect(tenant).toMatch(
      /CREATE SCHEMA flux_verify_amcheck;\s+REVOKE ALL ON SCHEMA flux_verify_amcheck FROM PUBLIC;\s+CREATE EXTENSION amcheck/,
    );
  });

  it('quotes role names as literals', () => {
    expect(
      preRestoreSql({ projectId, roles: ["o'brien"], kind: 'project_db', extensions: [] }, { amcheck: true }),
    ).toContain("'o''brien'");
  });
});

describe('the read-back script', () => {
  // One real throwaway server: the script is plpgsql with dynamic SQL, so only running it proves it.
  const driver = createLocalDriver({ pathEnv: process.env.PATH, spare: false });
  let sandbox: Sandbox;
  const odd = { schema: 'we"ird', name: "it's" };
  beforeAll(async () => {
    sandbox = await driver.create({ projectId, backupId: '01J00000000000000000000009', ttlMs: 60_000 });
    // As before a restore: the roles and amcheck first.
    const prepared = await runSql(
      sandbox,
      preRestoreSql({ projectId, roles: [], kind: 'project_db', extensions: [] }, { amcheck: true }),
    );
    expect(prepared.failed, prepared.stderr).toBe(false);
    const made = await runSql(
      sandbox,
      `CREATE SCHEMA "we""ird";
       CREATE TABLE "we""ird"."it's" (id int PRIMARY KEY, v text);
       INSERT INTO "we""ird"."it's" SELECT g, g::text FROM generate_series(1, 7) g;
       CREATE SEQUENCE "we""ird"."q's" INCREMENT 5 START 10;
       SELECT nextval('"we""ird"."q''s"');`,
    );
    expect(made.stderr).toBe('');
  });
  afterAll(() => driver.close());

  async function readBack(input: Partial<ReadBackInput> = {}): Promise<ReadBack> {
    const result = await runSql(
      sandbox,
      readBackSql({
        schemas: [odd.schema, 'absent_schema'],
        tables: [odd, { schema: odd.schema, name: 'absent_table' }],
        sequences: [
          { schema: odd.schema, name: "q's" },
          { schema: odd.schema, name: 'absent_seq' },
        ],
        amcheck: true,
        ...input,
      }),
    );
    expect(result.stderr).toBe('');
    return parseLastJson<ReadBack>(result.stdout, 'read back');
  }

  it('reads schemas, counts and sequences of odd names, skipping what was not restored', async () => {
    const back = await readBack();
    expect(back.schemas).toEqual([odd.schema]);
    expect(back.relations).toEqual([
      { schema: odd.schema, name: "it's", kind: 'r' },
      { schema: odd.schema, name: "q's", kind: 'S' },
    ]);
    expect(back.counts).toEqual([{ schema: odd.schema, name: "it's", rows: 7 }]);
    expect(back.sequences).toEqual([
      { schema: odd.schema, name: "q's", lastValue: '10', isCalled: true, increment: '5' },
    ]);
    expect(back.integrity).toEqual({
      available: true,
      error: null,
      indexes: [{ schema: odd.schema, index: "it's_pkey", error: null }],
    });
    expect(Object.keys(back.seconds).sort()).toEqual(['integrity', 'sequences', 'structure', 'volume']);
  });

  it('leaves amcheck out when it is not asked for', async () => {
    const back = await readBack({ amcheck: false, tables: [], sequences: [] });
    expect(back).toMatchObject({ integrity: null, counts: [], sequences: [] });
  });
});
