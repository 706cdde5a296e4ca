import { describe, expect, it } from 'vitest';
import { hasRelationKindProtection, requireRelationKindProtection } from './tools.js';

describe('restrict_nonsystem_relation_kind (CVE-2024-7348)', () => {
  it('is in the August 2024 minors of each supported major and in every later major', () => {
    for (const v of ['12.20', '13.16', '14.13', '15.8', '15.18', '16.4', '17.0', '18.1']) {
      expect(hasRelationKindProtection(v), v).toBe(true);
    }
    for (const v of ['11.22', '12.19', '13.15', '14.12', '15.7', '16.3', '15']) {
      expect(hasRelationKindProtection(v), v).toBe(false);
    }
  });

  it('refuses an unprotected pg_dump with the release to install', () => {
    const tool = { name: 'pg_dump', path: '/x/pg_dump', version: '16.2', major: 16 };
    expect(() => requireRelationKindProtection(tool)).toThrow(
      /16\.2 .*install postgresql-client 16\.4 or newer/,
    );
    expect(() => requireRelationKindProtection({ ...tool, version: '16.4' })).not.toThrow();
  });
});
