// The CA trust of probes, read once at start: Node's bundled roots plus NODE_EXTRA_CA_CERTS plus
// FLUX_PROBE_CA_FILE, appended. An explicit `ca` replaces Node's default store (which is where Node puts
// NODE_EXTRA_CA_CERTS; `tls.rootCertificates` does not list them), so the extra files are read here too.
import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import tls from 'node:tls';
import { AppError, errnoOf } from '../../shared/errors.js';

export type TrustSourceName = 'system' | 'NODE_EXTRA_CA_CERTS' | 'FLUX_PROBE_CA_FILE';

export interface TrustSource {
  name: TrustSourceName;
  path?: string;
  certificates: number;
}

export interface CaTrust {
  /** Every trusted CA, PEM: system roots first, then the extra files in order. */
  ca: readonly string[];
  /** Built once from `ca`; every probe's TLS connection uses it (building one per request is costly). */
  secureContext: tls.SecureContext;
  sources: readonly TrustSource[];
}

const PEM_CERT = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g;

/** The certificates of a PEM bundle; throws when there is none or one does not parse. */
export function parsePemBundle(text: string, what: string): string[] {
  const blocks = text.match(PEM_CERT) ?? [];
  if (blocks.length === 0) {
    throw new AppError('config_invalid', `${what} holds no PEM certificate (-----BEGIN CERTIFICATE-----)`);
  }
  blocks.forEach((pem, index) => {
    try {
      new X509Certificate(pem);
    } catch (error) {
      throw new AppError('config_invalid', `${what}: certificate #${index + 1} does not parse`, {
        cause: error,
      });
    }
  });
  return blocks;
}

function readBundle(file: string, variable: Exclude<TrustSourceName, 'system'>): string[] {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (error) {
    throw new AppError(
      'config_invalid',
      `${variable}=${file} cannot be read (${errnoOf(error) ?? (error as Error).message}): mount the CA ` +
        'bundle readable by this process or unset the variable',
      { cause: error },
    );
  }
  return parsePemBundle(text, `${variable}=${file}`);
}

export interface TrustOptions {
  /** The process environment (NODE_EXTRA_CA_CERTS). */
  env: NodeJS.ProcessEnv;
  /** FLUX_PROBE_CA_FILE. */
  caFile?: string | undefined;
}

export function loadTrust(options: TrustOptions): CaTrust {
  const system = [...tls.rootCertificates];
  const ca = [...system];
  const sources: TrustSource[] = [{ name: 'system', certificates: system.length }];
  const extra: Array<[Exclude<TrustSourceName, 'system'>, string | undefined]> = [
    ['NODE_EXTRA_CA_CERTS', options.env.NODE_EXTRA_CA_CERTS?.trim() || undefined],
    ['FLUX_PROBE_CA_FILE', options.caFile],
  ];
  for (const [name, file] of extra) {
    if (!file) continue;
    const certs = readBundle(file, name);
    ca.push(...certs);
    sources.push({ name, path: file, certificates: certs.length });
  }
  return { ca, secureContext: tls.createSecureContext({ ca }), sources };
}
