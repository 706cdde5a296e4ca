// Connection URLs → node-postgres options and libpq environment, both directions: what each sslmode
// verifies on each end, what is refused, and where the password may appear (only PGPASSWORD).
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AppError } from '../errors.js';
import { libpqEnv, parsePgUrl, pgClientAttempts, pgClientConfig, pgError, type SslMode } from './conn.js';

const PASSWORD = 'pa:ss@w/rd?x';
const ENCODED = encodeURIComponent(PASSWORD);

let dir: string;
let emptyHome: string;
let ca: string;
let crt: string;
let key: string;
const CA_PEM = '-----BEGIN CERTIFICATE-----\nca\n-----END CERTIFICATE-----\n';
const CRT_PEM = '-----BEGIN CERTIFICATE-----\nclient\n-----END CERTIFICATE-----\n';
const KEY_PEM = '-----BEGIN PRIVATE KEY-----\nkey\n-----END PRIVATE KEY-----\n';

beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'flux-conn-'));
  emptyHome = path.join(dir, 'home-empty');
  fs.mkdirSync(emptyHome);
  ca = path.join(dir, 'ca.pem');
  crt = path.join(dir, 'client.crt');
  key = path.join(dir, 'client.key');
  fs.writeFileSync(ca, CA_PEM);
  fs.writeFileSync(crt, CRT_PEM);
  fs.writeFileSync(key, KEY_PEM, { mode: 0o600 });
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

/** The libpq defaults under ~/.postgresql never leak in from the machine running the tests. */
const home = () => ({ homeDir: emptyHome });
const url = (query = '', hosts = 'db.example:6543') => `postgres://app:${ENCODED}@${hosts}/ledger${query}`;

function refusal(fn: () => unknown): AppError {
  try {
    fn();
  } catch (error) {
    expect(error).toBeInstanceOf(AppError);
    return error as AppError;
  }
  throw new Error('expected a refusal');
}

describe('parsePgUrl (libpq URI grammar)', () => {
  it('takes the parts of a single-host URL, percent-decoded', () => {
    const t = parsePgUrl(url('?connect_timeout=3'));
    expect(t).toMatchObject({
      host: 'db.example',
      port: 6543,
      hosts: [{ host: 'db.example', port: 6543 }],
      user: 'app',
      password: PASSWORD,
      database: 'ledger',
      sslmode: 'prefer',
      connectTimeoutSeconds: 3,
    });
  });

  it('defaults like today: localhost:5432, user and database postgres, sslmode prefer (libpq’s default)', () => {
    expect(parsePgUrl('postgresql://')).toMatchObject({
      host: 'localhost',
      port: 5432,
      user: 'postgres',
      database: 'postgres',
      sslmode: 'prefer',
      connectTimeoutSeconds: 10,
    });
    expect(parsePgUrl('postgres://h').password).toBeUndefined();
  });

  it('keeps every host of a multi-host URL, each with its port, IPv6 in brackets', () => {
    const t = parsePgUrl(url('', 'a.example:5433,[::1]:5434,c.example'));
    expect(t.hosts).toEqual([
      { host: 'a.example', port: 5433 },
      { host: '::1', port: 5434 },
      { host: 'c.example', port: 5432 },
    ]);
    expect(t.password).toBe(PASSWORD);
  });

  it('takes ?host= (a socket directory or a list) and ?port= (one for all or one each)', () => {
    expect(parsePgUrl('postgres://app@/db?host=%2Fvar%2Frun%2Fpostgresql&port=5444').hosts).toEqual([
      { host: '/var/run/postgresql', port: 5444 },
    ]);
    expect(parsePgUrl('postgres:///db?host=a,b&port=1,2').hosts).toEqual([
      { host: 'a', port: 1 },
      { host: 'b', port: 2 },
    ]);
    expect(refusal(() => parsePgUrl('postgres:///db?host=a,b,c&port=1,2')).code).toBe('config_invalid');
  });

  it('decodes %XX only, as libpq does ("+" in options stays "+")', () => {
    const t = parsePgUrl(url('?options=-c%20search_path%3Da+b&target_session_attrs=read-write'));
    expect(t.options).toBe('-c search_path=a+b');
    expect(t.targetSessionAttrs).toBe('read-write');
  });

  it('refuses what it cannot carry to both ends, never dropping it silently', () => {
    for (const query of [
      '?channel_binding=require',
      '?sslcrldir=/etc/crl',
      '?ssl=true',
      '?uselibpqcompat=true',
      '?sslpassword=x',
      '?sslmode=no-verify',
      '?sslmode=verify_full',
      '?target_session_attrs=rw',
      '?sslrootcert=system',
      '?connect_timeout=soon',
    ]) {
      const e = refusal(() => parsePgUrl(url(query)));
      expect(e.code, query).toBe('config_invalid');
      expect(e.message, query).not.toContain(PASSWORD);
      expect(e.message, query).not.toContain(ENCODED);
    }
  });

  it('says what to do about sslrootcert=system (libpq 16+ only)', () => {
    expect(refusal(() => parsePgUrl(url('?sslmode=verify-full&sslrootcert=system'))).message).toMatch(
      /libpq 16 or later.*give the path of a CA file/,
    );
  });

  it('refuses other protocols and malformed encodings without echoing the URL', () => {
    expect(refusal(() => parsePgUrl(`mysql://app:${ENCODED}@h/db`)).message).toContain('protocol mysql:');
    const e = refusal(() => parsePgUrl(`postgres://app:${ENCODED}%zz@h/db`));
    expect(e.message).not.toContain(ENCODED);
    expect(refusal(() => parsePgUrl('not a url')).code).toBe('config_invalid');
  });
});

describe('sslmode → node-postgres attempts (libpq semantics)', () => {
  const attempts = (query: string) => pgClientAttempts(parsePgUrl(url(query)), 'test', home());
  const sslOf = (query: string) => attempts(query).map((a) => a.ssl);

  it('disable: plaintext only', () => {
    expect(sslOf('?sslmode=disable')).toEqual([false]);
  });

  it('allow: plaintext first, then TLS without verification (no root certificate)', () => {
    expect(sslOf('?sslmode=allow')).toEqual([false, { rejectUnauthorized: false }]);
  });

  it('prefer and no sslmode: TLS without verification first, then plaintext', () => {
    expect(sslOf('?sslmode=prefer')).toEqual([{ rejectUnauthorized: false }, false]);
    expect(sslOf('')).toEqual([{ rejectUnauthorized: false }, false]);
  });

  it('require without a root certificate: TLS only, nothing verified', () => {
    expect(sslOf('?sslmode=require')).toEqual([{ rejectUnauthorized: false }]);
  });

  it('require with sslrootcert behaves as verify-ca: the chain against that CA, not the name', () => {
    const [ssl] = sslOf(`?sslmode=require&sslrootcert=${ca}`);
    expect(ssl).toMatchObject({ ca: CA_PEM, rejectUnauthorized: true });
    const check = (ssl as tls.ConnectionOptions).checkServerIdentity;
    expect(check?.('db.example', { subject: { CN: 'other' } } as tls.PeerCertificate)).toBeUndefined();
  });

  it('require with libpq’s default ~/.postgresql/root.crt also verifies the chain', () => {
    const withRoot = path.join(dir, 'home-root');
    fs.mkdirSync(path.join(withRoot, '.postgresql'), { recursive: true });
    fs.writeFileSync(path.join(withRoot, '.postgresql', 'root.crt'), CA_PEM);
    const [ssl] = pgClientAttempts(parsePgUrl(url('?sslmode=require')), 'test', { homeDir: withRoot }).map(
      (a) => a.ssl,
    );
    expect(ssl).toMatchObject({ ca: CA_PEM, rejectUnauthorized: true });
    expect(libpqEnv(parsePgUrl(url('?sslmode=require')), 'test', { homeDir: withRoot }).PGSSLROOTCERT).toBe(
      path.join(withRoot, '.postgresql', 'root.crt'),
    );
  });

  it('verify-ca: the chain against sslrootcert, any host name', () => {
    const [ssl] = sslOf(`?sslmode=verify-ca&sslrootcert=${ca}`) as tls.ConnectionOptions[];
    expect(ssl).toMatchObject({ ca: CA_PEM, rejectUnauthorized: true });
    expect(ssl?.checkServerIdentity?.('db.example', { subject: { CN: 'x' } } as tls.PeerCertificate)).toBe(
      undefined,
    );
  });

  it('verify-full: the chain against sslrootcert and Node’s own host name check', () => {
    const [ssl] = sslOf(`?sslmode=verify-full&sslrootcert=${ca}`) as tls.ConnectionOptions[];
    expect(ssl).toEqual({ ca: CA_PEM, rejectUnauthorized: true });
    expect(ssl && 'checkServerIdentity' in ssl).toBe(false);
  });

  it('verify-ca and verify-full without a root certificate are refused (libpq refuses; no system roots)', () => {
    for (const mode of ['verify-ca', 'verify-full']) {
      const e = refusal(() => attempts(`?sslmode=${mode}`));
      expect(e.code).toBe('config_invalid');
      expect(e.message).toContain('add sslrootcert=/path/ca.pem');
    }
  });

  it('a named certificate file that is missing is refused, also under require (libpq would go unverified)', () => {
    for (const mode of ['require', 'verify-full']) {
      const e = refusal(() => attempts(`?sslmode=${mode}&sslrootcert=${path.join(dir, 'missing.pem')}`));
      expect(e.message).toContain('missing.pem');
    }
  });

  it('client certificate and key are sent', () => {
    const [ssl] = sslOf(`?sslmode=verify-full&sslrootcert=${ca}&sslcert=${crt}&sslkey=${key}`);
    expect(ssl).toMatchObject({ cert: CRT_PEM, key: KEY_PEM });
    expect(refusal(() => attempts(`?sslmode=require&sslcert=${crt}`)).message).toContain('add sslkey=');
  });

  it('a private key others can read is refused, as libpq refuses it', () => {
    const open = path.join(dir, 'open.key');
    fs.writeFileSync(open, KEY_PEM, { mode: 0o644 });
    fs.chmodSync(open, 0o644);
    const e = refusal(() => attempts(`?sslmode=require&sslcert=${crt}&sslkey=${open}`));
    expect(e.message).toContain(`chmod 600 ${open}`);
    expect(
      refusal(() => libpqEnv(parsePgUrl(url(`?sslcert=${crt}&sslkey=${open}`)), 'test', home())).code,
    ).toBe('config_invalid');
  });

  it('a Unix socket never uses TLS, as in libpq', () => {
    const t = parsePgUrl('postgres://app@/db?host=/var/run/postgresql&sslmode=verify-full');
    expect(pgClientAttempts(t, 'test', home()).map((a) => a.ssl)).toEqual([false]);
  });

  it('passes options; pgClientConfig is the first attempt', () => {
    const t = parsePgUrl(url('?options=-c%20statement_timeout%3D5s&sslmode=disable'));
    expect(pgClientConfig(t, 'test', home())).toMatchObject({
      host: 'db.example',
      port: 6543,
      user: 'app',
      password: PASSWORD,
      database: 'ledger',
      application_name: 'test',
      options: '-c statement_timeout=5s',
      ssl: false,
    });
  });

  it('refuses a multi-host URL for node-postgres, naming the fix, never taking the first host', () => {
    const t = parsePgUrl(url(`?sslmode=verify-full&sslrootcert=${ca}`, 'a.example,b.example:5433'));
    const e = refusal(() => pgClientAttempts(t, 'test', home()));
    expect(e.code).toBe('config_invalid');
    expect(e.message).toMatch(/names 2 hosts \(a\.example,b\.example\).*put the one server/);
    expect(e.message).not.toContain(PASSWORD);
  });
});

describe('sslmode → libpq environment of child tools', () => {
  const env = (query: string, hosts?: string) => libpqEnv(parsePgUrl(url(query, hosts)), 'test', home());

  it.each(['disable', 'allow', 'prefer', 'require'] satisfies SslMode[])(
    '%s is passed as PGSSLMODE',
    (mode) => {
      expect(env(`?sslmode=${mode}`).PGSSLMODE).toBe(mode);
    },
  );

  it('no sslmode is libpq’s prefer, explicitly', () => {
    expect(env('').PGSSLMODE).toBe('prefer');
  });

  it('verify-ca / verify-full carry the root certificate, client certificate, key and CRL', () => {
    const crl = path.join(dir, 'root.crl');
    fs.writeFileSync(crl, 'crl');
    for (const mode of ['verify-ca', 'verify-full']) {
      expect(
        env(`?sslmode=${mode}&sslrootcert=${ca}&sslcert=${crt}&sslkey=${key}&sslcrl=${crl}`),
      ).toMatchObject({
        PGSSLMODE: mode,
        PGSSLROOTCERT: ca,
        PGSSLCERT: crt,
        PGSSLKEY: key,
        PGSSLCRL: crl,
      });
    }
  });

  it('verify-full without a root certificate is refused before a tool runs', () => {
    expect(refusal(() => env('?sslmode=verify-full')).code).toBe('config_invalid');
  });

  it('keeps every host and port of a multi-host URL, options and target_session_attrs', () => {
    const e = env(
      '?options=-c%20work_mem%3D64MB&target_session_attrs=read-write',
      'a.example:5433,[::1]:5434,c.example',
    );
    expect(e).toMatchObject({
      PGHOST: 'a.example,::1,c.example',
      PGPORT: '5433,5434,5432',
      PGOPTIONS: '-c work_mem=64MB',
      PGTARGETSESSIONATTRS: 'read-write',
    });
  });

  it('the password is in PGPASSWORD and nowhere else', () => {
    const e = env(`?sslmode=verify-full&sslrootcert=${ca}&options=-c%20a%3Db`, 'a.example,b.example');
    expect(e.PGPASSWORD).toBe(PASSWORD);
    const elsewhere = Object.entries(e).filter(([k, v]) => k !== 'PGPASSWORD' && v.includes(PASSWORD));
    expect(elsewhere).toEqual([]);
    expect(Object.keys(e).sort()).toEqual(
      [
        'PGAPPNAME',
        'PGCONNECT_TIMEOUT',
        'PGDATABASE',
        'PGHOST',
        'PGOPTIONS',
        'PGPASSWORD',
        'PGPORT',
        'PGSSLMODE',
        'PGSSLROOTCERT',
        'PGUSER',
      ].sort(),
    );
    expect(libpqEnv(parsePgUrl('postgres://app@h/db'), 'test', home()).PGPASSWORD).toBeUndefined();
  });
});

describe('pgError', () => {
  it('names a certificate verification failure and the fix, never the URL', () => {
    const tlsFailure = Object.assign(new Error('self-signed certificate in certificate chain'), {
      code: 'SELF_SIGNED_CERT_IN_CHAIN',
    });
    const e = pgError(tlsFailure, 'connecting to the source');
    expect(e.code).toBe('dependency_unavailable');
    expect(e.message).toMatch(
      /TLS certificate failed verification \(SELF_SIGNED_CERT_IN_CHAIN.*do not lower sslmode/,
    );
  });

  it('passes an AppError through unchanged', () => {
    const refused = new AppError('config_invalid', 'refused');
    expect(pgError(refused, 'x')).toBe(refused);
  });
});
