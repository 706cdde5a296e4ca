import { randomUUID } from 'node:crypto';
import http from 'node:http';
import https from 'node:https';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  createFluxRoles,
  generateBulkData,
  seedProjectDb,
  seedTenant,
  shortIdOf,
  tenantRoleOf,
  tenantSchemaOf,
} from './fixtures.js';
import { type PgCluster, startPostgres } from './pg.js';
import {
  createCa,
  destroyCa,
  type Gateway,
  issueCert,
  startHttpGateway,
  startTlsGateway,
  type TestCa,
} from './tls.js';

describe('shortIdOf / tenant names', () => {
  it('derives names from the project UUID', () => {
    const id = 'ABC12345-6789-4def-8123-456789abcdef';
    expect(shortIdOf(id)).toBe('abc123456789');
    expect(tenantSchemaOf(id)).toBe('t_abc123456789_api');
    expect(tenantRoleOf(id)).toBe('t_abc123456789_role');
    expect(() => shortIdOf('not-a-uuid')).toThrow(/UUID/);
  });
});

describe('startPostgres + fixtures', () => {
  let a: PgCluster;
  let b: PgCluster;

  beforeAll(async () => {
    const started = Date.now();
    [a, b] = await Promise.all([startPostgres(), startPostgres({ superuserPassword: "p@ss w'rd/x" })]);
    console.log(`two clusters started concurrently in ${Date.now() - started} ms`);
  });

  afterAll(async () => {
    await Promise.all([a?.destroy(), b?.destroy()]);
  });

  it('starts independent clusters reachable by URL, password and unix socket', async () => {
    expect(a.port).not.toBe(b.port);
    expect(a.serverVersionNum).toBeGreaterThanOrEqual(150000);
    expect(b.password).toBe("p@ss w'rd/x");
    const pg = await import('pg');
    const viaUrl = new pg.default.Client({ connectionString: b.url() });
    await viaUrl.connect();
    expect((await viaUrl.query('select current_user as u')).rows[0].u).toBe('postgres');
    await viaUrl.end();
    const viaSocket = new pg.default.Client({
      host: a.socketDir,
      port: a.port,
      user: 'postgres',
      database: 'postgres',
    });
    await viaSocket.connect();
    await viaSocket.end();
    const wrong = new pg.default.Client({ ...a.connectionConfig(), password: 'wrong' });
    await expect(wrong.connect()).rejects.toThrow(/password authentication failed/);
  });

  it('seeds a tenant whose returned counts match the database', async () => {
    await a.createDatabase('flux_tenants');
    await a.createDatabase('flux_tenants'); // idempotent
    const projectId = randomUUID();
    const t = await seedTenant(a, { db: 'flux_tenants', projectId, rows: 5000 });
    expect(t.schema).toBe(tenantSchemaOf(projectId));
    expect(t.role).toBe(tenantRoleOf(projectId));
    expect(t.tables).toEqual({ customers: 5000, orders: 5000 });
    for (const table of ['customers', 'orders']) {
      const [row] = await a.query(`select count(*)::int as n from ${t.schema}.${table}`, [], 'flux_tenants');
      expect(row?.n).toBe(t.tables[table]);
    }
    expect(t.sequences).toEqual({ customers_id_seq: 5000, invoice_seq: 1006, orders_id_seq: 5000 });

    const policies = await a.query(
      'select policyname, roles::text[] as roles, qual from pg_policies where schemaname = $1',
      [t.schema],
      'flux_tenants',
    );
    expect(policies).toHaveLength(1);
    expect(policies[0]?.roles).toEqual(expect.arrayContaining([t.role, 'authenticated']));
    expect(policies[0]?.qual).toContain('auth.uid()');

    const [view] = await a.query(
      `select count(*)::int as n from ${t.schema}.customer_totals where order_count > 0`,
      [],
      'flux_tenants',
    );
    expect(view?.n).toBe(5000);

    // RLS in action: as the tenant role with a JWT subject, only that owner's orders are visible.
    const client = await a.connect('flux_tenants');
    try {
      const [owner] = (await client.query(`select owner_id from ${t.schema}.orders limit 1`)).rows;
      await client.query('begin');
      await client.query(`set local role ${t.role}`);
      await client.query(`select set_config('request.jwt.claim.sub', $1, true)`, [owner.owner_id]);
      const visible = await client.query(`select count(*)::int as n from ${t.schema}.orders`);
      expect(visible.rows[0].n).toBe(1);
      await client.query('rollback');
    } finally {
      await client.end();
    }
  });

  it('seeds an empty tenant, and several tenants concurrently into one database', async () => {
    const empty = await seedTenant(a, { db: 'flux_tenants', projectId: randomUUID(), empty: true });
    expect(empty.tables).toEqual({});
    const rels = await a.query(
      `select count(*)::int as n from pg_class c join pg_namespace n on n.oid = c.relnamespace where n.nspname = $1`,
      [empty.schema],
      'flux_tenants',
    );
    expect(rels[0]?.n).toBe(0);
    expect(
      await a.query('select 1 from pg_namespace where nspname = $1', [empty.schema], 'flux_tenants'),
    ).toHaveLength(1);

    const many = await Promise.all(
      [1, 2, 3].map((i) => seedTenant(a, { db: 'flux_tenants', projectId: randomUUID(), rows: i * 10 })),
    );
    expect(many.map((t) => t.tables.orders)).toEqual([10, 20, 30]);
    await Promise.all([createFluxRoles(a), createFluxRoles(a, 'flux_tenants'), createFluxRoles(b)]);
    const roles = await a.query(
      `select rolname, rolbypassrls, rolinherit, rolcanlogin from pg_roles
        where rolname in ('anon', 'authenticated', 'service_role', 'authenticator') order by rolname`,
    );
    expect(roles).toEqual([
      { rolname: 'anon', rolbypassrls: false, rolinherit: true, rolcanlogin: false },
      { rolname: 'authenticated', rolbypassrls: false, rolinherit: true, rolcanlogin: false },
      { rolname: 'authenticator', rolbypassrls: false, rolinherit: false, rolcanlogin: true },
      { rolname: 'service_role', rolbypassrls: true, rolinherit: true, rolcanlogin: false },
    ]);
  });

  it('seeds a v1 project database and bulk data', async () => {
    const p = await seedProjectDb(b, { db: 'proj_v1', rows: 200 });
    expect(p.tables).toEqual({ todos: 200, users: 200 });
    expect(p.sequences).toEqual({ ticket_seq: 502, todos_id_seq: 200 });
    const [open] = await b.query('select count(*)::int as n from open_todos', [], 'proj_v1');
    expect(open?.n).toBeGreaterThan(0);

    const bulk = await generateBulkData(b, { db: 'proj_v1', schema: 'bench', megabytes: 8 });
    expect(bulk.bytes).toBeGreaterThanOrEqual(8 * 1024 * 1024);
    expect(bulk.bytes).toBeLessThan(14 * 1024 * 1024);
    const [n] = await b.query('select count(*)::int as n from bench.bulk_data', [], 'proj_v1');
    expect(n?.n).toBe(bulk.rows);
  });

  it('survives kill() + restart() with committed data, and stop/destroy are idempotent', async () => {
    const c = await startPostgres({ settings: { max_connections: 20 } });
    try {
      await c.query('create table t (x int); insert into t values (42)');
      const pid = c.postmasterPid();
      expect(pid).toBeDefined();
      await c.kill();
      expect(c.isRunning()).toBe(false);
      await expect(c.query('select 1')).rejects.toThrow();
      await c.restart();
      expect(await c.query('select x from t')).toEqual([{ x: 42 }]);
      expect((await c.query(`select current_setting('max_connections') as v`))[0]?.v).toBe('20');
      await c.stop();
      await c.stop();
      expect(c.isRunning()).toBe(false);
      await c.start();
      expect(await c.query('select 1 as one')).toEqual([{ one: 1 }]);
    } finally {
      await c.destroy();
      await c.destroy();
    }
  });
});

interface HttpsResult {
  status: number;
  body: string;
}

function httpsGet(url: string, opts: { servername: string; host: string; ca: string[]; path?: string }) {
  return new Promise<HttpsResult>((resolve, reject) => {
    const req = https.request(
      `${url}${opts.path ?? '/'}`,
      { servername: opts.servername, headers: { host: opts.host }, ca: opts.ca, agent: false },
      (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => {
          body += chunk;
        });
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      },
    );
    req.on('error', reject);
    req.end();
  });
}

describe('tls: CA, certs and gateways', () => {
  let ca: TestCa;
  let otherCa: TestCa;
  const gateways: Gateway[] = [];

  beforeAll(async () => {
    [ca, otherCa] = await Promise.all([createCa(), createCa('Untrusted CA')]);
  });

  afterAll(async () => {
    await Promise.all(gateways.map((g) => g.close()));
    await Promise.all([ca && destroyCa(ca), otherCa && destroyCa(otherCa)]);
  });

  it('issues valid and expired certs', async () => {
    const valid = await issueCert(ca, { hosts: ['*.flux.test', 'flux.test'], ips: ['127.0.0.1'] });
    const x = new (await import('node:crypto')).X509Certificate(valid.certPem);
    expect(x.subjectAltName).toContain('DNS:*.flux.test');
    expect(x.checkIssued(new (await import('node:crypto')).X509Certificate(ca.certPem))).toBe(true);
    expect(new Date(x.validTo).getTime()).toBeGreaterThan(Date.now());

    const expired = await issueCert(ca, { hosts: ['*.flux.test'], expired: true });
    const xe = new (await import('node:crypto')).X509Certificate(expired.certPem);
    expect(new Date(xe.validTo).getTime()).toBeLessThan(Date.now());
    expect(expired.notAfter.getTime()).toBe(new Date(xe.validTo).getTime());
  });

  it('routes by Host, records SNI, and clients verify the chain', async () => {
    const good = await issueCert(ca, { hosts: ['*.flux.test'] });
    const expired = await issueCert(ca, { hosts: ['*.expired.test'], expired: true });
    const untrusted = await issueCert(otherCa, { hosts: ['*.rogue.test'] });
    const gw = await startTlsGateway({
      cert: { '*.flux.test': good, '*.expired.test': expired, '*.rogue.test': untrusted },
      routes: {
        'api--x--abc1234.flux.test': (req, res) => {
          res.end(`hello ${req.url}`);
        },
        '*.expired.test': (_req, res) => res.end('expired'),
        '*.rogue.test': (_req, res) => res.end('rogue'),
      },
    });
    gateways.push(gw);
    const trust = [...tls.rootCertificates, ca.certPem];

    const ok = await httpsGet(gw.url, {
      servername: 'api--x--abc1234.flux.test',
      host: 'api--x--abc1234.flux.test',
      ca: trust,
      path: '/rest/v1/todos',
    });
    expect(ok).toEqual({ status: 200, body: 'hello /rest/v1/todos' });
    expect(gw.received[0]).toEqual({
      sni: 'api--x--abc1234.flux.test',
      host: 'api--x--abc1234.flux.test',
      method: 'GET',
      path: '/rest/v1/todos',
    });

    const miss = await httpsGet(gw.url, {
      servername: 'other.flux.test',
      host: 'other.flux.test:443',
      ca: trust,
    });
    expect(miss.status).toBe(404);
    expect(gw.received[1]).toMatchObject({ sni: 'other.flux.test', host: 'other.flux.test:443' });

    await expect(
      httpsGet(gw.url, { servername: 'a.rogue.test', host: 'a.rogue.test', ca: trust }),
    ).rejects.toMatchObject({
      code: expect.stringMatching(/UNABLE_TO_VERIFY_LEAF_SIGNATURE|SELF_SIGNED_CERT_IN_CHAIN/),
    });
    await expect(
      httpsGet(gw.url, { servername: 'a.expired.test', host: 'a.expired.test', ca: trust }),
    ).rejects.toMatchObject({ code: 'CERT_HAS_EXPIRED' });
    // Trusting only a CA that did not issue the served cert.
    await expect(
      httpsGet(gw.url, { servername: 'api.flux.test', host: 'api.flux.test', ca: [otherCa.certPem] }),
    ).rejects.toMatchObject({ code: 'UNABLE_TO_VERIFY_LEAF_SIGNATURE' });

    expect(gw.snis).toEqual([
      'api--x--abc1234.flux.test',
      'other.flux.test',
      'a.rogue.test',
      'a.expired.test',
      'api.flux.test',
    ]);
    expect(gw.received).toHaveLength(2);
  });

  it('plain HTTP gateway records Host', async () => {
    const gw = await startHttpGateway({ routes: { 'api.flux.test': (_req, res) => res.end('plain') } });
    gateways.push(gw);
    const body = await new Promise<string>((resolve, reject) => {
      http
        .get(`${gw.url}/health`, { headers: { host: 'api.flux.test' }, agent: false }, (res) => {
          res.setEncoding('utf8');
          let text = '';
          res.on('data', (chunk: string) => {
            text += chunk;
          });
          res.on('end', () => resolve(text));
        })
        .on('error', reject);
    });
    expect(body).toBe('plain');
    expect(gw.received).toEqual([{ sni: null, host: 'api.flux.test', method: 'GET', path: '/health' }]);
    await gw.close();
    await gw.close();
  });
});
