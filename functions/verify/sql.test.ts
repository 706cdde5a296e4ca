import { describe, expect, it } from 'vitest';
import { countsSelect, preRestoreSql, rolesFor, sequencesSelect } from './sql.js';

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
    const tenant = preRestoreSql({
      projectId,
      roles: [],
      kind: 'tenant_export',
      extensions: [{ name: 'citext', version: '1.6' }],
    });
    expect(tenant).toMatch(/ALTER ROLE service_role BYPASSRLS/);
    expect(tenant).toMatch(/GRANT anon, authenticated, service_role, "t_550e8400e29b_role" TO authenticator/);
    expect(tenant).toMatch(/CREATE SCHEMA IF NOT EXISTS auth/);
    expect(tenant).toMatch(/FUNCTION auth\.uid\(\) RETURNS uuid/);
    expect(tenant).toMatch(/CREATE EXTENSION IF NOT EXISTS "citext"/);
    // A project database dump carries its own auth schema and extensions.
    const projectDb = preRestoreSql({
      projectId,
      roles: [],
      kind: 'project_db',
      extensions: [{ name: 'citext', version: '1.6' }],
    });
    expect(projectDb).not.toMatch(/SCHEMA IF NOT EXISTS auth|auth\.uid/);
    expect(projectDb).not.toMatch(/EXTENSION/);
  });

  it('quotes role names as literals', () => {
    expect(preRestoreSql({ projectId, roles: ["o'brien"], kind: 'project_db', extensions: [] })).toContain(
      "'o''brien'",
    );
  });
});

describe('read-back queries', () => {
  it('quote identifiers and literals of odd names', () => {
    const sql = countsSelect([{ schema: 'we"ird', name: "it's" }]);
    expect(sql).toContain(`FROM "we""ird"."it's"`);
    expect(sql).toContain(`'it''s' AS name`);
    expect(sequencesSelect([{ schema: 's', name: 'q' }])).toContain(`'"s"."q"'::regclass`);
  });
});
