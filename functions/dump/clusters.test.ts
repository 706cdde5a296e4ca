import { describe, expect, it } from 'vitest';
import {
  type ClusterInfo,
  clustersOf,
  createStaticRegistry,
  type Project,
  tenantSchemaOf,
} from '../../shared/registry.js';
import { type ClusterProbe, placementFindings } from './clusters.js';

const p = (n: number, cluster: string): Project => ({
  id: `${n}0000000-0000-4000-8000-00000000000${n}`,
  slug: `p${n}`,
  hash: `${n}${n}${n}${n}${n}${n}${n}`,
  engine: 'v2_shared',
  cluster,
});
const one = p(1, 'a');
const two = p(2, 'b');
const gone: Project = {
  id: '30000000-0000-4000-8000-000000000003',
  slug: 'gone',
  hash: '3333333',
  engine: 'v1_dedicated',
  databaseUrl: 'postgres://h/gone_db',
};
const registry = createStaticRegistry({
  clusters: [
    { name: 'a', url: 'env:A', maxConcurrentDumps: 1 },
    { name: 'b', url: 'env:B', maxConcurrentDumps: 1 },
  ],
  projects: [one, two, gone],
});
const clusters: ClusterInfo[] = clustersOf(registry);
const find = (probes: Record<string, ClusterProbe>) =>
  placementFindings(clusters, new Map(Object.entries(probes)), registry.list(), {}).map(
    (f) => `${f.cluster}:${f.code}:${f.project ?? f.schema}`,
  );

describe('placementFindings', () => {
  it('finds nothing when every tenant is where the registry says and nowhere else', () => {
    expect(
      find({
        a: { reachable: true, schemas: [tenantSchemaOf(one.id)] },
        b: { reachable: true, schemas: [tenantSchemaOf(two.id), 'public_stuff'] },
        'dedicated:gone': { reachable: true },
      }),
    ).toEqual([]);
  });

  it('a missing schema, a schema on two clusters, an orphan, a missing v1 database', () => {
    expect(
      find({
        a: {
          reachable: true,
          schemas: [
            tenantSchemaOf(one.id),
            tenantSchemaOf(two.id),
            't_abcdefabcdef_api',
            tenantSchemaOf(gone.id),
          ],
        },
        b: { reachable: true, schemas: [] },
        'dedicated:gone': { reachable: true, databases: [] },
      }).sort(),
    ).toEqual(
      [
        'a:tenant_on_other_cluster:p2',
        'a:orphan_schema:t_abcdefabcdef_api',
        'a:tenant_on_other_cluster:gone',
        'b:tenant_missing:p2',
        'dedicated:gone:tenant_missing:gone',
      ].sort(),
    );
  });

  it('says nothing about a cluster it could not ask', () => {
    expect(
      find({
        a: { reachable: false, error: 'refused' },
        b: { reachable: true, schemas: [tenantSchemaOf(two.id)] },
        'dedicated:gone': { reachable: true },
      }),
    ).toEqual([]);
  });
});
