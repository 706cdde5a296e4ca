// One synthetic HTTP(S) request to a tenant API through the gateway: Host is the tenant host, and for an
// https gateway the TLS SNI is the tenant host and the certificate is checked against it, with the CA
// trust loaded once (trust.ts). Node's fetch cannot set Host, so this is node:http/https with a fresh
// connection per probe (as blackbox_exporter does), timing each phase from socket events.
import http from 'node:http';
import https from 'node:https';
import tls from 'node:tls';
import { PROBE_TIMEOUT_CODE } from './rules.js';
import type { CaTrust } from './trust.js';

export const PHASES = ['resolve', 'connect', 'tls', 'processing', 'transfer'] as const;
export type Phase = (typeof PHASES)[number];

export const PROBE_USER_AGENT = 'flux-ops-probe/1';

export interface ProbeTarget {
  /** Where the connection goes: the gateway, or https://<apiHost> when falling back to the public URL. */
  url: URL;
  /** The tenant host: Host header, TLS SNI and the identity the certificate must name. */
  host: string;
  /** Request path on the tenant API, e.g. `/`. */
  path: string;
  headers?: Record<string, string>;
}

/** What the network saw. A failure has the same shape as a success; callers branch on fields. */
export interface RawProbe {
  status: number | null;
  error: { code: string; message: string } | null;
  /** The response head had arrived when the error happened (a body failure, not a connect failure). */
  afterHeaders: boolean;
  /** The phase that did not complete, for failures. */
  failedPhase: Phase | null;
  /** Seconds per phase; 0 for phases that did not happen (resolve with an IP literal, tls over http). */
  phases: Record<Phase, number>;
  durationSeconds: number;
  /** Earliest notAfter in the presented chain (only known after a verified handshake). */
  certExpiresAt: Date | null;
  /** The SNI sent (null over plain http). */
  sni: string | null;
  bodyBytes: number;
}

export interface Prober {
  probe(target: ProbeTarget, signal?: AbortSignal): Promise<RawProbe>;
}

/**
 * The URL a tenant is probed through: the gateway when configured, otherwise `https://<apiHost>` if the
 * public fallback is enabled, otherwise none (the caller says which variable to set).
 */
export function targetUrlOf(
  apiHost: string,
  gatewayUrl: string | undefined,
  fallbackPublic: boolean,
): URL | undefined {
  if (gatewayUrl) return new URL(gatewayUrl);
  if (fallbackPublic) return new URL(`https://${apiHost}`);
  return undefined;
}

/** The request target: the gateway URL's own path prefix (if any) joined with the probe path. */
export function requestPathOf(url: URL, probePath: string): string {
  const prefix = url.pathname.replace(/\/+$/, '');
  return `${prefix}${probePath.startsWith('/') ? probePath : `/${probePath}`}`;
}

function earliestExpiry(cert: tls.DetailedPeerCertificate | undefined): Date | null {
  let earliest: number | null = null;
  const seen = new Set<string>();
  let current = cert;
  // The chain ends in a self-signed root whose issuerCertificate is itself.
  while (current?.valid_to && !seen.has(current.fingerprint256)) {
    seen.add(current.fingerprint256);
    const at = Date.parse(current.valid_to);
    if (!Number.isNaN(at) && (earliest === null || at < earliest)) earliest = at;
    current = current.issuerCertificate;
  }
  return earliest === null ? null : new Date(earliest);
}

export function createProber(options: { trust: CaTrust; timeoutMs: number }): Prober {
  const { trust, timeoutMs } = options;

  return {
    probe(target, signal) {
      return new Promise<RawProbe>((resolve) => {
        const isHttps = target.url.protocol === 'https:';
        const hostname = target.url.hostname.replace(/^\[|\]$/g, '');
        const port = target.url.port ? Number(target.url.port) : isHttps ? 443 : 80;
        const t0 = performance.now();
        const at: Partial<Record<'lookup' | 'connect' | 'tls' | 'head' | 'end', number>> = {};
        let status: number | null = null;
        let certExpiresAt: Date | null = null;
        let bodyBytes = 0;
        let settled = false;

        const finish = (error?: { code: string; message: string }) => {
          if (settled) return;
          settled = true;
          clearTimeout(timer);
          signal?.removeEventListener('abort', onAbort);
          const end = performance.now();
          const resolved = at.lookup ?? t0;
          const connected = at.tls ?? at.connect;
          const phases: Record<Phase, number> = {
            resolve: (resolved - t0) / 1000,
            connect: at.connect !== undefined ? (at.connect - resolved) / 1000 : 0,
            tls: at.tls !== undefined && at.connect !== undefined ? (at.tls - at.connect) / 1000 : 0,
            processing: at.head !== undefined && connected !== undefined ? (at.head - connected) / 1000 : 0,
            transfer: at.end !== undefined && at.head !== undefined ? (at.end - at.head) / 1000 : 0,
          };
          let failedPhase: Phase | null = null;
          if (error) {
            if (at.connect === undefined) failedPhase = at.lookup === undefined ? 'resolve' : 'connect';
            else if (isHttps && at.tls === undefined) failedPhase = 'tls';
            else if (at.head === undefined) failedPhase = 'processing';
            else failedPhase = 'transfer';
            // A hostname that never resolved fails in resolve; an IP literal has no resolve phase.
            if (failedPhase === 'resolve' && /^[\d.]+$|:/.test(hostname)) failedPhase = 'connect';
          }
          resolve({
            status,
            error: error ?? null,
            afterHeaders: at.head !== undefined,
            failedPhase,
            phases,
            durationSeconds: (end - t0) / 1000,
            certExpiresAt,
            sni: isHttps ? target.host : null,
            bodyBytes,
          });
        };

        const headers: Record<string, string> = {
          host: target.host,
          'user-agent': PROBE_USER_AGENT,
          accept: '*/*',
          connection: 'close',
          ...target.headers,
        };
        const common: http.RequestOptions = {
          host: hostname,
          port,
          method: 'GET',
          path: requestPathOf(target.url, target.path),
          headers,
          // A fresh connection per probe, so every phase is measured and no pooled socket hides a failure.
          agent: false,
        };
        const onResponse = (res: http.IncomingMessage) => {
          at.head = performance.now();
          status = res.statusCode ?? null;
          res.on('data', (chunk: Buffer) => {
            bodyBytes += chunk.length;
          });
          res.on('end', () => {
            at.end = performance.now();
            finish();
          });
          res.on('error', (error: NodeJS.ErrnoException) =>
            finish({ code: error.code ?? 'ECONNRESET', message: error.message }),
          );
          res.on('aborted', () => finish({ code: 'ECONNRESET', message: 'the response was aborted' }));
        };
        // https.request hands these to tls.connect (secureContext is a tls.connect option the https
        // typings do not list).
        const tlsOptions: https.RequestOptions & Pick<tls.ConnectionOptions, 'secureContext'> = {
          ...common,
          servername: target.host,
          secureContext: trust.secureContext,
          // The certificate must name the tenant host, whatever address the gateway has.
          checkServerIdentity: (_address, cert) => tls.checkServerIdentity(target.host, cert),
        };
        const req = isHttps ? https.request(tlsOptions, onResponse) : http.request(common, onResponse);

        req.on('socket', (socket) => {
          // 'lookup' also fires when resolution failed; only a success ends the resolve phase.
          socket.once('lookup', (error: Error | null) => {
            if (!error) at.lookup = performance.now();
          });
          socket.once('connect', () => {
            at.connect = performance.now();
          });
          socket.once('secureConnect', () => {
            at.tls = performance.now();
            certExpiresAt = earliestExpiry((socket as tls.TLSSocket).getPeerCertificate(true));
          });
        });
        req.on('error', (error: NodeJS.ErrnoException) =>
          finish({ code: error.code ?? 'ERR_PROBE', message: error.message }),
        );

        const timer = setTimeout(() => {
          finish({ code: PROBE_TIMEOUT_CODE, message: `no complete response within ${timeoutMs} ms` });
          req.destroy();
        }, timeoutMs);
        const onAbort = () => {
          finish({ code: 'ABORT_ERR', message: 'the probe was cancelled' });
          req.destroy();
        };
        if (signal?.aborted) onAbort();
        else signal?.addEventListener('abort', onAbort, { once: true });
        req.end();
      });
    },
  };
}
