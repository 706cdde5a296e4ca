// libpq connection URIs (postgres://…) parsed by libpq's own grammar, multi-host lists included, into a
// PgTarget both node-postgres and the libpq tools are configured from. Pure: no file is read here.
// https://www.postgresql.org/docs/current/libpq-connect.html#LIBPQ-CONNSTRING-URIS
//
// Not pg-connection-string (2.14): it hands the URL to WHATWG URL, which rejects multi-host URLs; it decodes
// the database name with decodeURI and query values as forms ('+' → space), where libpq decodes %XX only;
// and it reads certificate files while parsing, treating sslrootcert=system as a file name. Its libpq-compat sslmode table is not libpq's either
// (see tls.ts), so the TLS options are built in tls.ts.
import { AppError } from '../errors.js';

export const SSL_MODES = ['disable', 'allow', 'prefer', 'require', 'verify-ca', 'verify-full'] as const;
export type SslMode = (typeof SSL_MODES)[number];

export const TARGET_SESSION_ATTRS = [
  'any',
  'read-write',
  'read-only',
  'primary',
  'standby',
  'prefer-standby',
] as const;
export type TargetSessionAttrs = (typeof TARGET_SESSION_ATTRS)[number];

export interface PgHost {
  /** A host name, an IP address, or a Unix socket directory (starts with `/`). */
  host: string;
  port: number;
}

export interface PgTarget {
  /** The host; for a multi-host URL every host, comma-separated as in PGHOST. */
  host: string;
  /** The port of the first host. */
  port: number;
  /** Every host of the URL in order (libpq tries them in turn; node-postgres accepts only one). */
  hosts: PgHost[];
  user: string;
  password?: string;
  database: string;
  /** libpq's sslmode; `prefer` when the URL names none, as libpq defaults. */
  sslmode: SslMode;
  sslrootcert?: string;
  sslcert?: string;
  sslkey?: string;
  sslcrl?: string;
  /** Command-line options sent to the server at connection start (`-c name=value …`). */
  options?: string;
  targetSessionAttrs?: TargetSessionAttrs;
  /** connect_timeout in seconds (0 = wait indefinitely); 10 unless the URL says otherwise. */
  connectTimeoutSeconds: number;
}

export const DEFAULT_PORT = 5432;
export const DEFAULT_CONNECT_TIMEOUT_S = 10;

/**
 * Query parameters flux-ops carries to both node-postgres and libpq. Any other one is refused: dropping a
 * parameter such as channel_binding=require or sslcrldir would silently weaken the connection.
 */
const KNOWN_PARAMS = new Set([
  'host',
  'port',
  'dbname',
  'user',
  'password',
  'sslmode',
  'sslrootcert',
  'sslcert',
  'sslkey',
  'sslcrl',
  'options',
  'target_session_attrs',
  'application_name',
  'connect_timeout',
]);

function invalid(message: string): AppError {
  return new AppError('config_invalid', message);
}

/** libpq decodes %XX everywhere and nothing else ('+' stays '+'). */
function decode(text: string, what: string): string {
  try {
    const out = decodeURIComponent(text);
    if (out.includes('\0')) throw new Error('NUL');
    return out;
  } catch {
    throw invalid(`a database URL has a malformed percent-encoding in its ${what} (value not shown)`);
  }
}

function parsePort(text: string): number {
  if (!/^\d{1,5}$/.test(text) || Number(text) < 1 || Number(text) > 65535) {
    throw invalid(`a database URL has port "${text}"; a port is a number from 1 to 65535`);
  }
  return Number(text);
}

/** `host[:port]` or `[v6]:port`, as one entry of a hostspec. */
function splitHostPort(entry: string): { host: string; port?: string } {
  if (entry.startsWith('[')) {
    const close = entry.indexOf(']');
    if (close < 0) throw invalid('a database URL has an IPv6 host without its closing "]"');
    const after = entry.slice(close + 1);
    if (after !== '' && !after.startsWith(':')) {
      throw invalid('a database URL has characters after an IPv6 host that are not ":port"');
    }
    return { host: entry.slice(1, close), ...(after ? { port: after.slice(1) } : {}) };
  }
  const colon = entry.lastIndexOf(':');
  return colon < 0 ? { host: entry } : { host: entry.slice(0, colon), port: entry.slice(colon + 1) };
}

/**
 * Parses `postgres[ql]://[user[:password]@][host[:port][,…]][/dbname][?param=value&…]` as libpq does.
 * Without a host: `localhost`, without a user or database: `postgres` (both ends get these explicitly, so
 * node-postgres and the tools agree).
 */
export function parsePgUrl(url: string): PgTarget {
  const scheme = /^(postgres|postgresql):\/\//i.exec(url);
  if (!scheme) {
    const protocol = /^([a-z][a-z0-9+.-]*):/i.exec(url)?.[1];
    throw invalid(
      protocol
        ? `a database URL has protocol ${protocol}:; expected postgres://`
        : 'a database URL is not a valid postgres:// URL (value not shown)',
    );
  }
  let rest = url.slice(scheme[0].length);
  // libpq: a userspec is whatever precedes the first '@' that comes before any '/'.
  let userspec: string | undefined;
  const at = rest.search(/[@/]/);
  if (at >= 0 && rest[at] === '@') {
    userspec = rest.slice(0, at);
    rest = rest.slice(at + 1);
  }
  const hostEnd = rest.search(/[/?]/);
  const hostspec = hostEnd < 0 ? rest : rest.slice(0, hostEnd);
  rest = hostEnd < 0 ? '' : rest.slice(hostEnd);
  let dbname: string | undefined;
  if (rest.startsWith('/')) {
    const q = rest.indexOf('?');
    dbname = rest.slice(1, q < 0 ? undefined : q);
    rest = q < 0 ? '' : rest.slice(q);
  }
  const query = rest.startsWith('?') ? rest.slice(1) : '';
  if (query.includes('#')) throw invalid('a database URL has a fragment (#…); libpq URLs have none');

  const params = new Map<string, string>();
  for (const pair of query.split('&')) {
    if (pair === '') continue;
    const eq = pair.indexOf('=');
    if (eq < 0) throw invalid('a database URL has a query parameter without "=value" (value not shown)');
    const key = decode(pair.slice(0, eq), 'query');
    if (!KNOWN_PARAMS.has(key)) {
      throw invalid(
        `a database URL has parameter "${key}", which flux-ops cannot carry to both node-postgres and libpq; ` +
          `remove it (supported: ${[...KNOWN_PARAMS].join(', ')})`,
      );
    }
    params.set(key, decode(pair.slice(eq + 1), `parameter ${key}`));
  }

  let user: string | undefined;
  let password: string | undefined;
  if (userspec !== undefined) {
    const colon = userspec.indexOf(':');
    user = decode(colon < 0 ? userspec : userspec.slice(0, colon), 'user name');
    if (colon >= 0) password = decode(userspec.slice(colon + 1), 'password');
  }
  // Query parameters override the URL's own parts, as in libpq.
  user = params.get('user') ?? user;
  password = params.get('password') ?? password;
  const database =
    params.get('dbname') ?? (dbname === undefined ? undefined : decode(dbname, 'database name'));

  const hosts = hostList(hostspec, params.get('host'), params.get('port'));

  const sslmode = params.get('sslmode') ?? 'prefer';
  if (!(SSL_MODES as readonly string[]).includes(sslmode)) {
    throw invalid(`a database URL has sslmode=${sslmode}; libpq knows ${SSL_MODES.join(', ')}`);
  }
  const sslrootcert = params.get('sslrootcert');
  if (sslrootcert === 'system') {
    // libpq 16+ reads "system" as the OpenSSL default roots; the client tools of older majors read it as a
    // file name and, under sslmode=require, silently skip verification. Refused rather than half-honoured.
    throw invalid(
      'a database URL has sslrootcert=system, which needs libpq 16 or later in every client tool: give the path ' +
        'of a CA file instead (e.g. sslrootcert=/etc/ssl/certs/ca-certificates.crt for the system roots)',
    );
  }
  const tsa = params.get('target_session_attrs');
  if (tsa !== undefined && !(TARGET_SESSION_ATTRS as readonly string[]).includes(tsa)) {
    throw invalid(
      `a database URL has target_session_attrs=${tsa}; libpq knows ${TARGET_SESSION_ATTRS.join(', ')}`,
    );
  }
  const timeout = params.get('connect_timeout');
  if (timeout !== undefined && !/^\d{1,6}$/.test(timeout)) {
    throw invalid(`a database URL has connect_timeout=${timeout}; it is a whole number of seconds`);
  }

  const first = hosts[0]!;
  const target: PgTarget = {
    host: hosts.map((h) => h.host).join(','),
    port: first.port,
    hosts,
    user: user || 'postgres',
    database: database || 'postgres',
    sslmode: sslmode as SslMode,
    // libpq waits at least 2 s when a timeout is set (fe-connect.c); 0 means no limit.
    connectTimeoutSeconds:
      timeout === undefined
        ? DEFAULT_CONNECT_TIMEOUT_S
        : Number(timeout) === 0
          ? 0
          : Math.max(2, Number(timeout)),
  };
  if (password) target.password = password;
  for (const key of ['sslrootcert', 'sslcert', 'sslkey', 'sslcrl', 'options'] as const) {
    const value = params.get(key);
    if (value) target[key] = value;
  }
  if (tsa !== undefined) target.targetSessionAttrs = tsa as TargetSessionAttrs;
  return target;
}

/** The hosts of the hostspec (or of ?host=), each with its port (or ?port=, one for all or one each). */
function hostList(hostspec: string, hostParam: string | undefined, portParam: string | undefined): PgHost[] {
  const entries =
    hostParam !== undefined
      ? hostParam.split(',').map((host) => ({ host }))
      : hostspec.split(',').map((entry) => {
          const { host, port } = splitHostPort(entry);
          return { host: decode(host, 'host'), ...(port !== undefined && port !== '' ? { port } : {}) };
        });
  const ports = portParam?.split(',');
  if (ports && ports.length !== 1 && ports.length !== entries.length) {
    throw invalid(
      `a database URL names ${entries.length} hosts and ${ports.length} ports; give one port for all or one per host`,
    );
  }
  return entries.map((entry, i) => {
    const port = ports ? (ports.length === 1 ? ports[0] : ports[i]) : (entry as { port?: string }).port;
    return { host: entry.host || 'localhost', port: port ? parsePort(port) : DEFAULT_PORT };
  });
}

/** Whether libpq would use a Unix socket for this host (it never uses TLS there). */
export function isSocketHost(host: string): boolean {
  return host.startsWith('/') || host.startsWith('@');
}
