// sslmode against real TLS Postgres servers with a CA made at test time, from both ends flux-ops connects
// with: node-postgres (withPgClient) and a libpq child (psql with libpqEnv). A rogue server with a
// certificate from another CA stands in for a man in the middle; a fake server that asks for the password
// in clear text shows what each mode would hand it.
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { AppError } from '../shared/errors.js';
import { libpqEnv, PREFER_NO_TLS_MEMORY_MS, parsePgUrl, withPgClient } from '../shared/pg/conn.js';
import { freePort, type PgCluster, pgBinPath, startPostgres } from './support/pg.js';
import { createCa, destroyCa, type IssuedCert, issueCert, type TestCa } from './support/tls.js';

const SSL_OF_SESSION = 'SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()';
const TLS_ONLY_ROLE = 'tls_only';
const TLS_ONLY_PASSWORD = 'tls-only-pw';
const CERT_ROLE = 'cert_only';

let ca: TestCa;
let rogueCa: TestCa;
let good: PgCluster; // certificate from `ca` for DNS:localhost only
let rogue: PgCluster; // certificate from `rogueCa` for localhost and 127.0.0.1
let plain: PgCluster; // no TLS at all
let fake: CapturingServer;
let emptyHome: string;
let clientCert: IssuedCert; // from `ca`, CN cert_only: the only way that role logs in

/** Turns TLS on in a running cluster (ssl is reloadable): key and certificate in its data directory. */
async function enableTls(cluster: PgCluster, cert: IssuedCert, extra: Record<string, string> = {}) {
  const owner = await fsp.stat(cluster.dataDir);
  for (const [name, pem] of [
    ['server.crt', cert.certPem],
    ['server.key', cert.keyPem],
  ] as const) {
    const file = path.join(cluster.dataDir, name);
    await fsp.writeFile(file, pem, { mode: 0o600 });
    await fsp.chown(file, owner.uid, owner.gid);
  }
  const settings = { ssl_cert_file: 'server.crt', ssl_key_file: 'server.key', ssl: 'on', ...extra };
  for (const [name, value] of Object.entries(settings)) {
    await cluster.query(`ALTER SYSTEM SET ${name} = '${value}'`);
  }
  await cluster.query('SELECT pg_reload_conf()');
  const deadline = Date.now() + 15_000;
  for (;;) {
    const rows = await cluster.query<{ ssl: string }>('SHOW ssl');
    if (rows[0]?.ssl === 'on') return;
    if (Date.now() > deadline) throw new Error(`ssl did not come on in ${cluster.logFile}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

function urlOf(
  cluster: { port: number },
  host: string,
  query: string,
  user = 'postgres',
  password = (cluster as PgCluster).password,
) {
  return `postgres://${user}:${encodeURIComponent(password)}@${host}:${cluster.port}/postgres${query}`;
}

/** node-postgres through withPgClient: whether the session is encrypted, or the AppError it was refused with. */
async function viaNode(url: string, sql = SSL_OF_SESSION): Promise<unknown> {
  return withPgClient(url, 'flux-ops-tls-test', async (client) => (await client.query(sql)).rows[0]);
}

async function refusedViaNode(url: string): Promise<AppError> {
  const error = await viaNode(url).then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(AppError);
  return error as AppError;
}

/** psql with nothing but PATH and the libpq environment of the URL; the password never in argv. */
async function viaPsql(url: string, sql = SSL_OF_SESSION) {
  const target = parsePgUrl(url);
  const args = ['-X', '-A', '-t', '-q', '-c', sql];
  if (target.password) expect(args.join(' ')).not.toContain(target.password);
  const r = await execa(pgBinPath('psql'), args, {
    env: { ...libpqEnv(target, 'flux-ops-tls-test'), PATH: process.env.PATH ?? '' },
    extendEnv: false,
    stdin: 'ignore',
    reject: false,
    timeout: 30_000,
  });
  return { exitCode: r.exitCode, stdout: String(r.stdout).trim(), stderr: String(r.stderr) };
}

async function logSince(cluster: PgCluster, offset: number): Promise<string> {
  return (await fsp.readFile(cluster.logFile)).subarray(offset).toString('utf8');
}

interface CapturingServer {
  port: number;
  /** Startup packets received (a client only sends one after its TLS handshake succeeded). */
  startups: string[];
  /** Passwords clients sent when asked for one in clear text. */
  passwords: string[];
  close(): Promise<void>;
}

/**
 * A server that speaks just enough of the protocol to be a man in the middle: accepts TLS with `cert`, then
 * asks for the password in clear text (AuthenticationCleartextPassword) and records what it is given.
 */
async function startCapturingServer(cert: IssuedCert): Promise<CapturingServer> {
  const startups: string[] = [];
  const passwords: string[] = [];
  const sockets = new Set<net.Socket>();
  const speak = (stream: tls.TLSSocket) => {
    let buf = Buffer.alloc(0);
    let phase: 'startup' | 'password' | 'done' = 'startup';
    stream.on('error', () => undefined);
    stream.on('data', (chunk: Buffer) => {
      buf = Buffer.concat([buf, chunk]);
      if (phase === 'startup' && buf.length >= 4 && buf.length >= buf.readInt32BE(0)) {
        startups.push(buf.subarray(8, buf.readInt32BE(0)).toString('utf8'));
        buf = buf.subarray(buf.readInt32BE(0));
        phase = 'password';
        const ask = Buffer.alloc(9);
        ask.write('R', 0);
        ask.writeInt32BE(8, 1);
        ask.writeInt32BE(3, 5); // AuthenticationCleartextPassword
        stream.write(ask);
      }
      if (phase === 'password' && buf.length >= 5 && buf.length >= 1 + buf.readInt32BE(1)) {
        passwords.push(buf.subarray(5, buf.readInt32BE(1)).toString('utf8').replace(/\0$/, ''));
        phase = 'done';
        const fields = Buffer.from('SFATAL\0C28P01\0Mpassword authentication failed\0\0', 'utf8');
        const err = Buffer.alloc(5);
        err.write('E', 0);
        err.writeInt32BE(4 + fields.length, 1);
        stream.end(Buffer.concat([err, fields]));
      }
    });
  };
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => undefined);
    const onRequest = (chunk: Buffer) => {
      const code = chunk.length >= 8 ? chunk.readInt32BE(4) : 0;
      if (code === 80877104) {
        socket.write('N'); // GSSENCRequest: no
        return;
      }
      socket.off('data', onRequest);
      if (code !== 80877103) {
        socket.destroy(); // a plaintext startup: this server only plays TLS
        return;
      }
      socket.write('S');
      speak(new tls.TLSSocket(socket, { isServer: true, cert: cert.certPem, key: cert.keyPem }));
    };
    socket.on('data', onRequest);
  });
  const port = await freePort();
  await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve));
  return {
    port,
    startups,
    passwords,
    close: () =>
      new Promise((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

/** A TCP relay in front of `port` that counts the connections made through it. */
async function startCountingRelay(
  port: number,
): Promise<{ port: number; connections: () => number; close(): Promise<void> }> {
  const sockets = new Set<net.Socket>();
  let connections = 0;
  const server = net.createServer((client) => {
    connections++;
    const upstream = net.connect(port, '127.0.0.1');
    for (const [a, b] of [
      [client, upstream],
      [upstream, client],
    ] as const) {
      sockets.add(a);
      a.on('error', () => undefined);
      a.on('close', () => {
        sockets.delete(a);
        b.destroy();
      });
    }
    client.pipe(upstream).pipe(client);
  });
  const relayPort = await freePort();
  await new Promise<void>((resolve) => server.listen(relayPort, '127.0.0.1', resolve));
  return {
    port: relayPort,
    connections: () => connections,
    close: () =>
      new Promise((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

beforeAll(async () => {
  [ca, rogueCa] = await Promise.all([createCa('Flux PG CA'), createCa('Rogue CA')]);
  const [goodCert, rogueCert] = await Promise.all([
    issueCert(ca, { hosts: ['localhost'] }),
    issueCert(rogueCa, { hosts: ['localhost'], ips: ['127.0.0.1'] }),
  ]);
  [good, rogue, plain] = await Promise.all([startPostgres(), startPostgres(), startPostgres()]);
  clientCert = await issueCert(ca, { hosts: [CERT_ROLE] });
  await fsp.chmod(clientCert.keyPath, 0o600);
  const caInData = path.join(good.dataDir, 'client-ca.crt');
  await fsp.copyFile(ca.certPath, caInData);
  const owner = await fsp.stat(good.dataDir);
  await fsp.chown(caInData, owner.uid, owner.gid);
  await Promise.all([
    enableTls(good, goodCert, { ssl_ca_file: 'client-ca.crt' }),
    enableTls(rogue, rogueCert, { log_connections: 'on' }),
  ]);
  // A role the server admits only over TLS (plaintext attempts are rejected by pg_hba), for sslmode=allow,
  // and one it admits only with a client certificate from `ca`.
  await good.query(`CREATE ROLE ${TLS_ONLY_ROLE} LOGIN PASSWORD '${TLS_ONLY_PASSWORD}'`);
  await good.query(`CREATE ROLE ${CERT_ROLE} LOGIN`);
  const hba = path.join(good.dataDir, 'pg_hba.conf');
  await fsp.writeFile(
    hba,
    `hostnossl all ${TLS_ONLY_ROLE} 127.0.0.1/32 reject\n` +
      `hostssl all ${TLS_ONLY_ROLE} 127.0.0.1/32 scram-sha-256\n` +
      `hostssl all ${CERT_ROLE} 127.0.0.1/32 cert\n` +
      `host all ${CERT_ROLE} 127.0.0.1/32 reject\n` +
      (await fsp.readFile(hba, 'utf8')),
  );
  await good.query('SELECT pg_reload_conf()');
  fake = await startCapturingServer(rogueCert);
  emptyHome = await fsp.mkdtemp(path.join(os.tmpdir(), 'flux-tls-home-'));
  // libpq's default root certificate would turn `require` into verify-ca for both ends; none on this machine.
  expect(fs.existsSync(path.join(os.userInfo().homedir, '.postgresql', 'root.crt'))).toBe(false);
});

afterAll(async () => {
  await fake?.close();
  await Promise.all([good?.destroy(), rogue?.destroy(), plain?.destroy()]);
  await Promise.all([ca && destroyCa(ca), rogueCa && destroyCa(rogueCa)]);
  if (emptyHome) await fsp.rm(emptyHome, { recursive: true, force: true });
});

describe('verify-full', () => {
  const q = () => `?sslmode=verify-full&sslrootcert=${ca.certPath}`;

  it('connects to the server whose certificate the CA signed for the host name, encrypted', async () => {
    expect(await viaNode(urlOf(good, 'localhost', q()))).toEqual({ ssl: true });
    expect(await viaPsql(urlOf(good, 'localhost', q()))).toMatchObject({ exitCode: 0, stdout: 't' });
  });

  it('refuses the right CA’s certificate under another name (127.0.0.1 is not in it)', async () => {
    const e = await refusedViaNode(urlOf(good, '127.0.0.1', q()));
    expect(e.code).toBe('dependency_unavailable');
    expect(e.message).toContain('ERR_TLS_CERT_ALTNAME_INVALID');
    const r = await viaPsql(urlOf(good, '127.0.0.1', q()));
    expect(r.exitCode).not.toBe(0);
    expect(r.stderr).toMatch(/server certificate for "localhost".* does not match host name "127\.0\.0\.1"/);
  });

  it('refuses a server with another CA’s certificate before any authentication', async () => {
    const offset = (await fsp.stat(rogue.logFile)).size;
    const e = await refusedViaNode(urlOf(rogue, 'localhost', q()));
    expect(e.code).toBe('dependency_unavailable');
    expect(e.message).toMatch(
      /TLS certificate failed verification \((UNABLE_TO_VERIFY_LEAF_SIGNATURE|UNABLE_TO_GET_ISSUER_CERT_LOCALLY)/,
    );
    expect(e.message).not.toContain(rogue.password);
    const r = await viaPsql(urlOf(rogue, 'localhost', q()));
    expect(r.exitCode).not.toBe(0);
    expect(r.stderr).toMatch(/certificate verify failed/);
    // The rogue server saw two TLS handshakes abort and no session, so no authentication was ever attempted.
    const log = await logSince(rogue, offset);
    expect(log.match(/could not accept SSL connection/g)?.length).toBe(2);
    expect(log).not.toMatch(/connection authorized|authentication|password/);
  });

  it('hands a man in the middle nothing: no startup packet, no password (require hands it the password)', async () => {
    const before = { startups: fake.startups.length, passwords: fake.passwords.length };
    await refusedViaNode(urlOf(fake, 'localhost', q(), 'postgres', 'secret-node'));
    const r = await viaPsql(urlOf(fake, 'localhost', q(), 'postgres', 'secret-psql'));
    expect(r.stderr).toMatch(/certificate verify failed/);
    expect(fake.startups.length).toBe(before.startups);
    expect(fake.passwords.length).toBe(before.passwords);

    // The same server under sslmode=require (encrypted, nothing verified) is given the password: the
    // server is a working trap, and only verification kept the password from it above.
    await refusedViaNode(urlOf(fake, 'localhost', '?sslmode=require', 'postgres', 'secret-node'));
    await viaPsql(urlOf(fake, 'localhost', '?sslmode=require', 'postgres', 'secret-psql'));
    expect(fake.passwords.slice(before.passwords)).toEqual(['secret-node', 'secret-psql']);
  });
});

describe('verify-ca', () => {
  const q = () => `?sslmode=verify-ca&sslrootcert=${ca.certPath}`;

  it('accepts the CA’s certificate under another name (the chain only)', async () => {
    expect(await viaNode(urlOf(good, '127.0.0.1', q()))).toEqual({ ssl: true });
    expect(await viaPsql(urlOf(good, '127.0.0.1', q()))).toMatchObject({ exitCode: 0, stdout: 't' });
  });

  it('refuses another CA’s certificate', async () => {
    const e = await refusedViaNode(urlOf(rogue, '127.0.0.1', q()));
    expect(e.message).toContain('TLS certificate failed verification');
    const r = await viaPsql(urlOf(rogue, '127.0.0.1', q()));
    expect(r.exitCode).not.toBe(0);
    expect(r.stderr).toMatch(/certificate verify failed/);
  });
});

describe('require', () => {
  it('without a root certificate encrypts without verifying (any server certificate)', async () => {
    expect(await viaNode(urlOf(rogue, '127.0.0.1', '?sslmode=require'))).toEqual({ ssl: true });
    expect(await viaPsql(urlOf(rogue, '127.0.0.1', '?sslmode=require'))).toMatchObject({
      exitCode: 0,
      stdout: 't',
    });
  });

  it('with sslrootcert verifies the chain as verify-ca: the right CA passes, another is refused', async () => {
    const q = `?sslmode=require&sslrootcert=${ca.certPath}`;
    expect(await viaNode(urlOf(good, '127.0.0.1', q))).toEqual({ ssl: true });
    expect((await viaPsql(urlOf(good, '127.0.0.1', q))).stdout).toBe('t');
    expect((await refusedViaNode(urlOf(rogue, '127.0.0.1', q))).message).toContain('failed verification');
    expect((await viaPsql(urlOf(rogue, '127.0.0.1', q))).stderr).toMatch(/certificate verify failed/);
  });

  it('is refused by a server without TLS', async () => {
    const e = await refusedViaNode(urlOf(plain, '127.0.0.1', '?sslmode=require'));
    expect(e.message).toContain('does not accept TLS');
    const r = await viaPsql(urlOf(plain, '127.0.0.1', '?sslmode=require'));
    expect(r.exitCode).not.toBe(0);
    expect(r.stderr).toMatch(/server does not support SSL/);
  });
});

describe('prefer, allow, disable', () => {
  it('prefer (and no sslmode) encrypts where the server can, and falls back to plaintext where not', async () => {
    for (const q of ['?sslmode=prefer', '']) {
      expect(await viaNode(urlOf(good, '127.0.0.1', q))).toEqual({ ssl: true });
      expect((await viaPsql(urlOf(good, '127.0.0.1', q))).stdout).toBe('t');
      expect(await viaNode(urlOf(plain, '127.0.0.1', q))).toEqual({ ssl: false });
      expect((await viaPsql(urlOf(plain, '127.0.0.1', q))).stdout).toBe('f');
    }
  });

  it('prefer remembers a server without TLS for a while: one connection each instead of two, then TLS again once it has passed', async () => {
    const later = await startPostgres();
    const relay = await startCountingRelay(later.port);
    try {
      const url = urlOf({ port: relay.port }, '127.0.0.1', '?sslmode=prefer', 'postgres', later.password);
      expect(await viaNode(url)).toEqual({ ssl: false });
      // The TLS attempt the server answered "no" to, then the plaintext one.
      expect(relay.connections()).toBe(2);
      expect(await viaNode(url)).toEqual({ ssl: false });
      expect(await viaNode(url)).toEqual({ ssl: false });
      expect(relay.connections()).toBe(4);
      await enableTls(later, await issueCert(ca, { hosts: ['localhost'] }));
      expect(await viaNode(url)).toEqual({ ssl: false });
      vi.useFakeTimers({ toFake: ['Date'] });
      vi.setSystemTime(Date.now() + PREFER_NO_TLS_MEMORY_MS);
      expect(await viaNode(url)).toEqual({ ssl: true });
      expect(await viaNode(url)).toEqual({ ssl: true });
      // libpq makes its fallback on one socket and keeps no memory: each psql is one connection.
      const before = relay.connections();
      expect((await viaPsql(url)).stdout).toBe('t');
      expect(relay.connections()).toBe(before + 1);
    } finally {
      vi.useRealTimers();
      await relay.close();
      await later.destroy();
    }
  });

  it('allow starts plaintext and moves to TLS when the server refuses plaintext', async () => {
    const url = (mode: string) =>
      urlOf(good, '127.0.0.1', `?sslmode=${mode}`, TLS_ONLY_ROLE, TLS_ONLY_PASSWORD);
    expect(await viaNode(url('allow'))).toEqual({ ssl: true });
    expect((await viaPsql(url('allow'))).stdout).toBe('t');
    expect(await viaNode(urlOf(good, '127.0.0.1', '?sslmode=allow'))).toEqual({ ssl: false });
    // disable never tries TLS, so this role is refused.
    expect((await refusedViaNode(url('disable'))).message).toMatch(
      /pg_hba\.conf rejects connection.*no encryption/,
    );
    expect((await viaPsql(url('disable'))).stderr).toMatch(/pg_hba\.conf rejects connection.*no encryption/);
  });
});

describe('client certificates', () => {
  it('sslcert and sslkey log in a role the server admits only by certificate, from both ends', async () => {
    const base = `postgres://${CERT_ROLE}@localhost:${good.port}/postgres?sslmode=verify-full&sslrootcert=${ca.certPath}`;
    const url = `${base}&sslcert=${clientCert.certPath}&sslkey=${clientCert.keyPath}`;
    expect(await viaNode(url, 'SELECT current_user AS who')).toEqual({ who: CERT_ROLE });
    expect((await viaPsql(url, 'SELECT current_user')).stdout).toBe(CERT_ROLE);
    // Without the certificate the same role is refused: the certificate is what let it in above.
    expect((await refusedViaNode(base)).code).toBe('dependency_unavailable');
    expect((await viaPsql(base, 'SELECT current_user')).exitCode).not.toBe(0);
  });
});

describe('hosts, options, target_session_attrs', () => {
  it('a multi-host URL reaches libpq whole (it skips the dead host) and is refused for node-postgres', async () => {
    const dead = await freePort();
    const url =
      `postgres://postgres:${encodeURIComponent(good.password)}@127.0.0.1:${dead},localhost:${good.port}/postgres` +
      `?sslmode=verify-full&sslrootcert=${ca.certPath}&target_session_attrs=read-write`;
    const r = await viaPsql(url, 'SELECT inet_server_port()');
    expect(r).toMatchObject({ exitCode: 0, stdout: String(good.port) });
    const e = await refusedViaNode(url);
    expect(e.code).toBe('config_invalid');
    expect(e.message).toContain('names 2 hosts');
    expect(e.message).not.toContain(good.password);
  });

  it('options reach the server from both ends', async () => {
    const url = urlOf(
      good,
      'localhost',
      `?sslmode=verify-full&sslrootcert=${ca.certPath}&options=-c%20search_path%3Dflux_tls`,
    );
    expect(await viaNode(url, 'SHOW search_path')).toEqual({ search_path: 'flux_tls' });
    expect((await viaPsql(url, 'SHOW search_path')).stdout).toBe('flux_tls');
  });

  it('target_session_attrs is checked on the one host of a node-postgres connection', async () => {
    const url = (attrs: string) => urlOf(good, '127.0.0.1', `?sslmode=disable&target_session_attrs=${attrs}`);
    expect(await viaNode(url('read-write'), 'SELECT 1 AS one')).toEqual({ one: 1 });
    const e = await refusedViaNode(url('read-only'));
    expect(e.message).toMatch(/is read-write, but the URL says target_session_attrs=read-only/);
    expect((await viaPsql(url('read-only'))).exitCode).not.toBe(0);
  });
});
