import { describe, expect, it } from 'vitest';
import { clustersOf, createStaticRegistry, type Project } from './registry.js';

const shared = { name: 'shared-1', url: 'env:SHARED', maxConcurrentDumps: 2 };
const v2 = (id: string, slug: string, hash: string): Project => ({
  id,
  slug,
  hash,
  engine: 'v2_shared',
  cluster: 'shared-1',
});

describe('registry validation', () => {
  it('refuses two projects whose ids share the first 12 hex digits (one schema for both)', () => {
    const a = v2('0a1b2c3d-4e5f-4000-8000-000000000001', 'first', '0a1b2c3');
    const b = v2('0a1b2c3d-4e5f-4111-8000-000000000002', 'second', '1a1b2c3');
    expect(() => createStaticRegistry({ clusters: [shared], projects: [a, b] })).toThrow(
      /projects first and second have ids that begin with the same 12 hex digits, so both map to schema t_0a1b2c3d4e5f_api/,
    );
    // One more digit apart is two schemas.
    const c = v2('0a1b2c3d-4e5e-4111-8000-000000000002', 'second', '1a1b2c3');
    expect(createStaticRegistry({ clusters: [shared], projects: [a, c] }).list()).toHaveLength(2);
  });

  it('refuses duplicate slugs, hashes, cluster names and a database claimed by two v1 projects', () => {
    const a = v2('10000000-0000-4000-8000-000000000001', 'same', 'aaaaaaa');
    const b = v2('20000000-0000-4000-8000-000000000002', 'same', 'bbbbbbb');
    expect(() => createStaticRegistry({ clusters: [shared], projects: [a, b] })).toThrow(/share slug "same"/);
    const c = v2('30000000-0000-4000-8000-000000000003', 'other', 'aaaaaaa');
    expect(() => createStaticRegistry({ clusters: [shared], projects: [a, c] })).toThrow(
      /share hash "aaaaaaa"/,
    );
    expect(() => createStaticRegistry({ clusters: [shared, { ...shared }] })).toThrow(
      /two clusters share the name "shared-1"/,
    );
    const v1 = (id: string, slug: string, hash: string, databaseUrl: string): Project => ({
      id,
      slug,
      hash,
      engine: 'v1_dedicated',
      databaseUrl,
    });
    expect(() =>
      createStaticRegistry({
        projects: [
          v1('40000000-0000-4000-8000-000000000004', 'one', '4444444', 'env:DB_ONE'),
          v1('50000000-0000-4000-8000-000000000005', 'two', '5555555', 'env:DB_ONE'),
        ],
      }),
    ).toThrow(/v1 projects one and two claim the same databaseUrl env:DB_ONE/);
    // A literal URL is never echoed (it may hold a password).
    let message = '';
    try {
      createStaticRegistry({
        projects: [
          v1('40000000-0000-4000-8000-000000000004', 'one', '4444444', 'postgres://u:s3cret@db/one'),
          v1('50000000-0000-4000-8000-000000000005', 'two', '5555555', 'postgres://u:s3cret@db/one/'),
        ],
      });
    } catch (error) {
      message = (error as Error).message;
    }
    expect(message).toMatch(/claim the same literal databaseUrl/);
    expect(message).not.toContain('s3cret');
  });

  it('a pooled tenant names a shared cluster and a v1 project a dedicated server', () => {
    const dedicated = { name: 'ded-1', url: 'env:DED', maxConcurrentDumps: 1, kind: 'dedicated' as const };
    const onDedicated = { ...v2('60000000-0000-4000-8000-000000000006', 'p', '6666666'), cluster: 'ded-1' };
    expect(() => createStaticRegistry({ clusters: [shared, dedicated], projects: [onDedicated] })).toThrow(
      /v2_shared project p names cluster "ded-1", which is a dedicated server/,
    );
    const v1OnShared: Project = {
      id: '70000000-0000-4000-8000-000000000007',
      slug: 'q',
      hash: '7777777',
      engine: 'v1_dedicated',
      databaseUrl: 'env:Q',
      cluster: 'shared-1',
    };
    expect(() => createStaticRegistry({ clusters: [shared], projects: [v1OnShared] })).toThrow(
      /v1_dedicated project q names cluster "shared-1", which is a shared cluster/,
    );
  });
});

describe('clustersOf', () => {
  it('lists the declared clusters with their tenants, then one derived cluster per unplaced v1 project', () => {
    const registry = createStaticRegistry({
      clusters: [{ ...shared, region: 'eu-west', labels: { tier: 'gold' } }],
      projects: [
        v2('80000000-0000-4000-8000-000000000008', 'pooled', '8888888'),
        {
          id: '90000000-0000-4000-8000-000000000009',
          slug: 'alone',
          hash: '9999999',
          engine: 'v1_dedicated',
          databaseUrl: 'env:ALONE',
        },
      ],
    });
    expect(
      clustersOf(registry).map((c) => ({
        name: c.name,
        kind: c.kind,
        derived: c.derived,
        region: c.region,
        labels: c.labels,
        slots: c.maxConcurrentDumps,
        projects: c.projects.map((p) => p.slug),
      })),
    ).toEqual([
      {
        name: 'shared-1',
        kind: 'shared',
        derived: false,
        region: 'eu-west',
        labels: { tier: 'gold' },
        slots: 2,
        projects: ['pooled'],
      },
      {
        name: 'dedicated:alone',
        kind: 'dedicated',
        derived: true,
        region: undefined,
        labels: {},
        slots: 1,
        projects: ['alone'],
      },
    ]);
  });
});
