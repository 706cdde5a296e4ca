/**
 * Test-time PKI and HTTP(S) gateways.
 *
 * `createCa()` / `issueCert()` drive the openssl CLI (ECDSA P-256 keys, a few ms per cert). Leaf certs are
 * signed with `openssl ca` so that notBefore/notAfter can be set explicitly (openssl 3.0's `x509 -req` has
 * no `-not_before/-not_after`); `expired: true` yields a cert valid from 30 days ago until 1 day ago.
 *
 * `startTlsGateway()` / `startHttpGateway()` emulate the Flux edge: they route by Host header and record
 * the SNI and Host of every request so tests can assert what a client actually sent.
 */
import { randomBytes } from 'node:crypto';
import fsp from 'node:fs/promises';
import http from 'node:http';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import { execa } from 'execa';

export interface TestCa {
  /** Temp dir holding the CA and every cert issued by it. Remove with {@link destroyCa}. */
  dir: string;
  name: string;
  certPath: string;
  keyPath: string;
  certPem: string;
}

export interface CertFiles {
  certPath: string;
  keyPath: string;
}

export interface IssuedCert extends CertFiles {
  certPem: string;
  keyPem: string;
  notBefore: Date;
  notAfter: Date;
}

export interface IssueCertOptions {
  /** DNS subjectAltNames; wildcards like `*.flux.test` are fine. The first one (≤64 chars) is also the CN. */
  hosts: string[];
  /** IP subjectAltNames, e.g. `['127.0.0.1']`. */
  ips?: string[];
  /** notAfter in the past (valid from 30 days ago until 1 day ago). */
  expired?: boolean;
  /** Validity in days from now (ignored when `expired`). Default 30. */
  days?: number;
}

async function openssl(args: string[], cwd: string): Promise<void> {
  const res = await execa('openssl', args, { cwd, reject: false, stdin: 'ignore' });
  if (res.exitCode !== 0) {
    throw new Error(`openssl ${args[0]} failed (exit ${res.exitCode}): ${String(res.stderr).trim()}`);
  }
}

const EC_KEY = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];

/** Creates a self-signed CA (10 years, ECDSA P-256) in a fresh temp dir. */
export async function createCa(name = 'Flux Test CA'): Promise<TestCa> {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'flux-ca-'));
  const certPath = path.join(dir, 'ca.crt');
  const keyPath = path.join(dir, 'ca.key');
  await openssl(
    [
      'req',
      '-x509',
      '-new',
      ...EC_KEY,
      '-keyout',
      keyPath,
      '-out',
      certPath,
      '-days',
      '3650',
      '-subj',
      `/CN=${name.replaceAll('/', '\\/')}`,
      '-addext',
      'basicConstraints=critical,CA:TRUE',
      '-addext',
      'keyUsage=critical,keyCertSign,cRLSign',
    ],
    dir,
  );
  return { dir, name, certPath, keyPath, certPem: await fsp.readFile(certPath, 'utf8') };
}

/** Removes the CA's temp dir (and every cert issued by it). */
export async function destroyCa(ca: TestCa): Promise<void> {
  await fsp.rm(ca.dir, { recursive: true, force: true });
}

/** `YYYYMMDDHHMMSSZ` (ASN.1 GeneralizedTime) as `openssl ca -startdate/-enddate` take it. */
function asn1Time(date: Date): string {
  return `${date.toISOString().replace(/[-:T]/g, '').slice(0, 14)}Z`;
}

/** Issues a server+client leaf cert for `hosts` signed by `ca`, in its own subdir of `ca.dir`. */
export async function issueCert(ca: TestCa, opts: IssueCertOptions): Promise<IssuedCert> {
  const sans = [...opts.hosts.map((h) => `DNS:${h}`), ...(opts.ips ?? []).map((ip) => `IP:${ip}`)];
  if (sans.length === 0) throw new Error('issueCert needs at least one host or ip');
  // Per-cert scratch dir with its own openssl ca "database": concurrent issuing never shares state.
  const id = randomBytes(8).toString('hex');
  const dir = path.join(ca.dir, `cert-${id}`);
  await fsp.mkdir(dir);
  const certPath = path.join(dir, 'cert.pem');
  const keyPath = path.join(dir, 'key.pem');
  const csrPath = path.join(dir, 'req.csr');
  const cnfPath = path.join(dir, 'ca.cnf');

  const day = 24 * 3600 * 1000;
  const now = Date.now();
  // Back-date valid certs by an hour to be robust against small clock differences.
  const notBefore = new Date(opts.expired ? now - 30 * day : now - 3600 * 1000);
  const notAfter = new Date(opts.expired ? now - day : now + (opts.days ?? 30) * day);
  // Second precision, as encoded in the certificate.
  notBefore.setUTCMilliseconds(0);
  notAfter.setUTCMilliseconds(0);

  const first = opts.hosts[0] ?? opts.ips?.[0] ?? 'flux-test';
  const cn = first.length <= 64 ? first : 'flux-test-leaf';
  await fsp.writeFile(path.join(dir, 'index.txt'), '');
  // Random positive 64-bit serial (leading nibble < 8 keeps it positive).
  await fsp.writeFile(
    path.join(dir, 'serial'),
    `${(Math.floor(Math.random() * 8) + 1).toString(16)}${id.slice(1)}\n`,
  );
  await fsp.writeFile(
    cnfPath,
    [
      '[ ca ]',
      'default_ca = testca',
      '[ testca ]',
      'database = index.txt',
      'new_certs_dir = .',
      'serial = serial',
      'default_md = sha256',
      'policy = policy_any',
      'unique_subject = no',
      'email_in_dn = no',
      'copy_extensions = none',
      '[ policy_any ]',
      'commonName = supplied',
      '[ leaf ]',
      'basicConstraints = critical,CA:FALSE',
      'keyUsage = critical,digitalSignature,keyEncipherment',
      'extendedKeyUsage = serverAuth,clientAuth',
      'subjectKeyIdentifier = hash',
      'authorityKeyIdentifier = keyid',
      `subjectAltName = ${sans.join(',')}`,
      '',
    ].join('\n'),
  );
  await openssl(['req', '-new', ...EC_KEY, '-keyout', keyPath, '-out', csrPath, '-subj', `/CN=${cn}`], dir);
  await openssl(
    [
      'ca',
      '-batch',
      '-notext',
      '-config',
      cnfPath,
      '-cert',
      ca.certPath,
      '-keyfile',
      ca.keyPath,
      '-in',
      csrPath,
      '-out',
      certPath,
      '-startdate',
      asn1Time(notBefore),
      '-enddate',
      asn1Time(notAfter),
      '-extfile',
      cnfPath,
      '-extensions',
      'leaf',
    ],
    dir,
  );
  const [certPem, keyPem] = await Promise.all([
    fsp.readFile(certPath, 'utf8'),
    fsp.readFile(keyPath, 'utf8'),
  ]);
  return { certPath, keyPath, certPem, keyPem, notBefore, notAfter };
}

// ---------------------------------------------------------------------------------------------------------
// Gateways

/** Request handler; its return value is ignored (a rejected promise becomes a 500). */
export type RouteHandler = (req: http.IncomingMessage, res: http.ServerResponse) => unknown;

export interface ReceivedRequest {
  /** SNI the client sent (null without TLS or without SNI). */
  sni: string | null;
  /** Host header as sent (including any `:port`), null if absent. */
  host: string | null;
  method: string;
  /** Request target, e.g. `/rest/v1/todos?select=*`. */
  path: string;
}

export interface Gateway {
  /** `https://127.0.0.1:<port>` (or `http://`). Connect here and set `servername` / Host yourself. */
  url: string;
  port: number;
  /** Every request, in arrival order (including 404s). */
  received: ReceivedRequest[];
  /** Every SNI seen in a TLS ClientHello, also for handshakes the client then abandoned (TLS only). */
  snis: string[];
  server: http.Server | https.Server;
  /** Closes the listener and all open connections. Idempotent. */
  close(): Promise<void>;
}

export interface GatewayOptions {
  /**
   * Handlers keyed by host name (matched case-insensitively against the Host header without port).
   * `*.suffix` keys match any single label; `*` alone is a catch-all. No match → 404.
   */
  routes: Record<string, RouteHandler>;
  /** Listen port on 127.0.0.1. Default 0 (random). */
  port?: number;
}

export interface TlsGatewayOptions extends GatewayOptions {
  /**
   * One cert for everything, or a per-SNI map (`'api.flux.test'`, `'*.flux.test'`, and optionally
   * `'*'`/`'default'` as fallback; otherwise the first entry serves unknown / absent SNI).
   */
  cert: CertFiles | Record<string, CertFiles>;
}

function lookupByHost<T>(map: Record<string, T>, name: string): T | undefined {
  const host = name.toLowerCase();
  const entries = Object.entries(map).map(([k, v]) => [k.toLowerCase(), v] as const);
  const exact = entries.find(([k]) => k === host);
  if (exact) return exact[1];
  const dot = host.indexOf('.');
  if (dot > 0) {
    const wildcard = entries.find(([k]) => k === `*${host.slice(dot)}`);
    if (wildcard) return wildcard[1];
  }
  return entries.find(([k]) => k === '*')?.[1];
}

function hostWithoutPort(host: string): string {
  if (host.startsWith('[')) return host.slice(0, host.indexOf(']') + 1);
  const colon = host.lastIndexOf(':');
  return colon >= 0 ? host.slice(0, colon) : host;
}

function isCertFiles(value: TlsGatewayOptions['cert']): value is CertFiles {
  return (
    typeof (value as CertFiles).certPath === 'string' && typeof (value as CertFiles).keyPath === 'string'
  );
}

function makeRequestHandler(routes: Record<string, RouteHandler>, received: ReceivedRequest[]) {
  return (req: http.IncomingMessage, res: http.ServerResponse) => {
    const socket = req.socket as Partial<tls.TLSSocket>;
    const sni = typeof socket.servername === 'string' ? socket.servername : null;
    const host = req.headers.host ?? null;
    received.push({ sni, host, method: req.method ?? 'GET', path: req.url ?? '/' });
    const handler = host === null ? routes['*'] : lookupByHost(routes, hostWithoutPort(host));
    if (!handler) {
      res.writeHead(404, { 'content-type': 'text/plain' });
      res.end(`no route for host ${host ?? '(none)'}\n`);
      return;
    }
    Promise.resolve()
      .then(() => handler(req, res))
      .catch((err: unknown) => {
        if (!res.headersSent) res.writeHead(500, { 'content-type': 'text/plain' });
        res.end(`handler error: ${String(err)}\n`);
      });
  };
}

async function listen(
  server: http.Server | https.Server,
  port: number,
  scheme: 'http' | 'https',
  received: ReceivedRequest[],
  snis: string[],
): Promise<Gateway> {
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });
  const actual = (server.address() as AddressInfo).port;
  let closed: Promise<void> | undefined;
  return {
    url: `${scheme}://127.0.0.1:${actual}`,
    port: actual,
    received,
    snis,
    server,
    close() {
      closed ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
      return closed;
    },
  };
}

/**
 * HTTPS server on 127.0.0.1 that routes by Host header and records SNI + Host of every request.
 * Per-SNI certificates are served via `SNICallback`.
 */
export async function startTlsGateway(opts: TlsGatewayOptions): Promise<Gateway> {
  const received: ReceivedRequest[] = [];
  const snis: string[] = [];
  const certMap: Record<string, CertFiles> = isCertFiles(opts.cert) ? { '*': opts.cert } : opts.cert;
  const contexts: Record<string, tls.SecureContext> = {};
  for (const [name, files] of Object.entries(certMap)) {
    const [cert, key] = await Promise.all([fsp.readFile(files.certPath), fsp.readFile(files.keyPath)]);
    contexts[name] = tls.createSecureContext({ cert, key });
  }
  const fallbackName = ['*', 'default'].find((k) => k in certMap) ?? Object.keys(certMap)[0];
  if (fallbackName === undefined) throw new Error('startTlsGateway needs at least one certificate');
  const fallbackFiles = certMap[fallbackName]!;
  const fallback = contexts[fallbackName]!;
  const [cert, key] = await Promise.all([
    fsp.readFile(fallbackFiles.certPath),
    fsp.readFile(fallbackFiles.keyPath),
  ]);

  const server = https.createServer(
    {
      cert,
      key,
      SNICallback: (servername, cb) => {
        snis.push(servername);
        cb(null, lookupByHost(contexts, servername) ?? fallback);
      },
    },
    makeRequestHandler(opts.routes, received),
  );
  return listen(server, opts.port ?? 0, 'https', received, snis);
}

/** Plain-HTTP variant of {@link startTlsGateway} (`sni` is always null, `snis` stays empty). */
export async function startHttpGateway(opts: GatewayOptions): Promise<Gateway> {
  const received: ReceivedRequest[] = [];
  const server = http.createServer(makeRequestHandler(opts.routes, received));
  return listen(server, opts.port ?? 0, 'http', received, []);
}
