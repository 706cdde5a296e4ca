// libpq's sslmode semantics, resolved once and applied to both ends: the certificate files libpq would use
// (URL parameters, else its defaults under ~/.postgresql) and the node-postgres TLS options for each mode.
// https://www.postgresql.org/docs/current/libpq-ssl.html#LIBPQ-SSL-PROTECTION
//
// pg-connection-string's useLibpqCompat is not used: it has no `allow`, makes `prefer` a TLS-only connection,
// lets verify-full trust the system roots without sslrootcert (libpq refuses), ignores ~/.postgresql and
// sslcrl, and reads sslrootcert=system as a file.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { ConnectionOptions } from 'node:tls';
import { AppError, errnoOf } from '../errors.js';
import { isSocketHost, type PgTarget, type SslMode } from './conninfo.js';

/** Where libpq looks when the URL names no file (fe-secure-openssl.c). */
const DEFAULT_FILES = {
  sslrootcert: 'root.crt',
  sslcrl: 'root.crl',
  sslcert: 'postgresql.crt',
  sslkey: 'postgresql.key',
} as const;
type FileParam = keyof typeof DEFAULT_FILES;

export interface TlsFiles {
  /** CA certificates the server's chain must lead to; when set, libpq verifies the chain in every mode. */
  sslrootcert?: string;
  sslcrl?: string;
  sslcert?: string;
  sslkey?: string;
}

export interface TlsOptions {
  /** Home directory whose `.postgresql/` holds libpq's default files (default: this OS user's, from passwd). */
  homeDir?: string;
}

/** The home directory libpq would use: the passwd entry's (the tools run without HOME in their env). */
function passwdHome(): string | undefined {
  try {
    return os.userInfo().homedir || undefined;
  } catch {
    return undefined;
  }
}

function exists(file: string): boolean {
  try {
    return fs.statSync(file).isFile();
  } catch {
    return false;
  }
}

/** Whether any host of the target is reached over TCP (libpq never uses TLS on a Unix socket). */
export function usesTcp(target: PgTarget): boolean {
  return target.hosts.some((h) => !isSocketHost(h.host));
}

/**
 * The files libpq would use for this target, checked. A file the URL names must exist (libpq would silently
 * skip verification under `require` when sslrootcert is missing: refused here instead); a default file is
 * used when it exists, as libpq does. verify-ca and verify-full without a root certificate are refused, as
 * libpq refuses them.
 */
export function resolveTlsFiles(target: PgTarget, options: TlsOptions = {}): TlsFiles {
  if (target.sslmode === 'disable' || !usesTcp(target)) return {};
  const home = options.homeDir ?? passwdHome();
  const files: TlsFiles = {};
  for (const param of Object.keys(DEFAULT_FILES) as FileParam[]) {
    const given = target[param];
    if (given !== undefined) {
      if (!exists(given)) {
        throw new AppError(
          'config_invalid',
          `a database URL has ${param}=${given}, which is not a readable file for this process (uid ${process.getuid?.() ?? '?'}): ` +
            'mount the file there or fix the path',
        );
      }
      files[param] = given;
    } else if (home !== undefined) {
      const fallback = path.join(home, '.postgresql', DEFAULT_FILES[param]);
      if (exists(fallback)) files[param] = fallback;
    }
  }
  if (files.sslkey !== undefined) requirePrivateKeyMode(files.sslkey);
  if (files.sslcert !== undefined && files.sslkey === undefined) {
    throw new AppError(
      'config_invalid',
      `a database URL's client certificate ${files.sslcert} has no private key: add sslkey=/path/key.pem`,
    );
  }
  if (
    (target.sslmode === 'verify-ca' || target.sslmode === 'verify-full') &&
    files.sslrootcert === undefined
  ) {
    throw new AppError(
      'config_invalid',
      `a database URL has sslmode=${target.sslmode} but no root certificate to verify the server with: add ` +
        'sslrootcert=/path/ca.pem (the CA that signed the server certificate) to the URL' +
        (home ? ` or put it in ${path.join(home, '.postgresql', DEFAULT_FILES.sslrootcert)}` : ''),
    );
  }
  return files;
}

/**
 * libpq refuses a private key others can read (0600 or less if ours, 0640 or less if root's): checked here
 * too, so node-postgres does not connect where pg_dump would then fail.
 */
function requirePrivateKeyMode(file: string): void {
  const st = fs.statSync(file);
  const uid = process.geteuid?.();
  const tooOpen = (st.uid === uid && (st.mode & 0o077) !== 0) || (st.uid === 0 && (st.mode & 0o037) !== 0);
  if (tooOpen) {
    throw new AppError(
      'config_invalid',
      `the database URL's sslkey ${file} has mode 0${(st.mode & 0o777).toString(8)}, which libpq refuses for ` +
        `a private key: chmod 600 ${file}`,
    );
  }
}

function readPem(file: string, param: string): string {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch (error) {
    throw new AppError(
      'config_invalid',
      `cannot read ${param} ${file} (${errnoOf(error) ?? 'error'}): make it readable by uid ${process.getuid?.() ?? '?'}`,
      { cause: error },
    );
  }
}

/** No host name check: verify-ca, and `require`/`prefer`/`allow` when a root certificate exists. */
const chainOnly = (): undefined => undefined;

/**
 * node-postgres TLS options for one TLS attempt under `mode`, as libpq behaves: with a root certificate the
 * chain is verified (against that file only, not the system roots), the host name only under verify-full;
 * without one (possible only below verify-ca) nothing is verified, as in libpq.
 */
export function nodeTlsOptions(mode: SslMode, files: TlsFiles): ConnectionOptions {
  const out: ConnectionOptions = {};
  if (files.sslcert !== undefined) out.cert = readPem(files.sslcert, 'sslcert');
  if (files.sslkey !== undefined) out.key = readPem(files.sslkey, 'sslkey');
  if (files.sslrootcert === undefined) {
    out.rejectUnauthorized = false;
    return out;
  }
  out.ca = readPem(files.sslrootcert, 'sslrootcert');
  if (files.sslcrl !== undefined) out.crl = readPem(files.sslcrl, 'sslcrl');
  out.rejectUnauthorized = true;
  if (mode !== 'verify-full') out.checkServerIdentity = chainOnly;
  return out;
}

/** Node's certificate verification failures (X509_V_ERR_* names, ERR_TLS_*), as they reach us from tls. */
const TLS_VERIFY_CODES = new Set([
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'CERT_SIGNATURE_FAILURE',
  'CERT_NOT_YET_VALID',
  'CERT_HAS_EXPIRED',
  'CERT_REVOKED',
  'CERT_UNTRUSTED',
  'CERT_REJECTED',
  'INVALID_CA',
  'PATH_LENGTH_EXCEEDED',
  'INVALID_PURPOSE',
  'UNABLE_TO_GET_CRL',
  'CRL_HAS_EXPIRED',
  'HOSTNAME_MISMATCH',
  'ERR_TLS_CERT_ALTNAME_INVALID',
]);

/** Whether `error` is the server certificate failing verification (the connection ended before any auth). */
export function isTlsVerifyError(error: unknown): boolean {
  const code = errnoOf(error);
  return code !== undefined && TLS_VERIFY_CODES.has(code);
}

/** Whether `error` came from the TLS layer at all (verification, handshake, protocol). */
export function isTlsError(error: unknown): boolean {
  const code = errnoOf(error);
  if (code === undefined) return false;
  return TLS_VERIFY_CODES.has(code) || code.startsWith('ERR_SSL_') || code.startsWith('ERR_TLS_');
}
