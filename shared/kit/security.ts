// The security posture rules both `flux-ops doctor --security` and every function's /readyz apply: pure
// functions over the configuration, the registry and the environment. Each finding has a stable code, what
// was found (never a secret: URLs are redacted, tokens named by id) and the fix in one line.
import { isIP } from 'node:net';
import { type Config, redactUrl } from '../config.js';
import { isAppError } from '../errors.js';
import { isSocketHost, parsePgUrl } from '../pg/conninfo.js';
import type { ReadyCheck } from '../readiness.js';
import { type ProjectRegistry, resolveUrl } from '../registry.js';

export type Severity = 'warning' | 'critical';

export interface SecurityFinding {
  severity: Severity;
  /** Stable, for monitors and tests: `pg_sslmode_weak`, `docker_socket_shared`, … */
  code: string;
  /** What was found, naming where (a variable, a service, a path). */
  found: string;
  /** The fix, in one line. */
  fix: string;
}

/** Whether `host` only accepts connections from this machine (127.0.0.0/8, ::1, localhost). */
export function isLoopbackHost(host: string): boolean {
  const h = host
    .trim()
    .toLowerCase()
    .replace(/^\[|\]$/g, '');
  if (h === 'localhost' || h.endsWith('.localhost')) return true;
  if (isIP(h) === 4) return h.startsWith('127.');
  if (isIP(h) === 6) return h === '::1' || /^::ffff:127\./.test(h);
  return false;
}

/**
 * A host on this deployment's own network: loopback, or a single-label name (a compose service such as
 * `replicate`, resolved by the container network's DNS and never routed off it).
 */
export function isDeploymentLocalHost(host: string): boolean {
  const h = host.trim().toLowerCase();
  return isLoopbackHost(h) || (isIP(h) === 0 && h !== '' && !h.includes('.'));
}

/** An event sink whose URL (its path is often a secret: Slack, pagers) and events travel readable. */
export function plainHttpSinkFinding(where: string, url: string): SecurityFinding | undefined {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    return undefined;
  }
  if (u.protocol !== 'http:' || isDeploymentLocalHost(u.hostname)) return undefined;
  return {
    severity: 'critical',
    code: 'sink_plain_http',
    found: `${where}: event sink ${redactUrl(url)} is plain http:// to ${u.hostname}, off this host and network: its URL path (often the webhook's secret) and every event travel readable`,
    fix: `use https:// for ${u.hostname} (or a loopback / compose-service relay)`,
  };
}

export function sinkFindings(where: string, config: Pick<Config, 'FLUX_EVENT_SINKS'>): SecurityFinding[] {
  return config.FLUX_EVENT_SINKS.flatMap((s) => plainHttpSinkFinding(where, s.url) ?? []);
}

/** Named once: a source that assigns it (test/probe.test.ts looks for that) never does so here. */
const TLS_REJECT_VAR = 'NODE_TLS_REJECT_UNAUTHORIZED';

export function tlsRejectFinding(where: string, env: NodeJS.ProcessEnv): SecurityFinding | undefined {
  if (env[TLS_REJECT_VAR]?.trim() !== '0') return undefined;
  return {
    severity: 'critical',
    code: 'tls_verification_disabled',
    found: `${where}: ${TLS_REJECT_VAR}=0 turns off certificate verification for every TLS connection of the process`,
    fix: `remove ${TLS_REJECT_VAR}; trust a private CA with NODE_EXTRA_CA_CERTS=/path/ca.pem (or FLUX_PROBE_CA_FILE)`,
  };
}

/** One database URL's TLS: anything short of verify-full over TCP to a host off this machine. */
export function pgTlsFinding(what: string, ref: string, env: NodeJS.ProcessEnv): SecurityFinding | undefined {
  let url: string;
  try {
    url = resolveUrl(ref, env, what);
  } catch {
    return {
      severity: 'warning',
      code: 'pg_url_unresolved',
      found: `${what}: its URL ${ref} is not set in this environment, so its sslmode cannot be checked`,
      fix: `run the audit with the functions' environment (--env-file) so ${ref.slice(4)} is set`,
    };
  }
  let target: ReturnType<typeof parsePgUrl>;
  try {
    target = parsePgUrl(url);
  } catch (error) {
    return {
      severity: 'warning',
      code: 'pg_url_invalid',
      found: `${what}: ${isAppError(error) ? error.message : 'the URL does not parse'}`,
      fix: 'fix the URL (postgres://user@host:5432/db?sslmode=verify-full)',
    };
  }
  const remote = target.hosts.filter((h) => !isSocketHost(h.host) && !isLoopbackHost(h.host));
  if (remote.length === 0 || target.sslmode === 'verify-full') return undefined;
  const hosts = remote.map((h) => h.host).join(',');
  if (target.sslmode === 'verify-ca') {
    return {
      severity: 'warning',
      code: 'pg_sslmode_verify_ca',
      found: `${what}: sslmode=verify-ca to ${hosts} checks the certificate's chain, not that it names the host: any certificate of that CA can stand in`,
      fix: 'set sslmode=verify-full (with sslrootcert=<CA file>) in the URL',
    };
  }
  return {
    severity: 'critical',
    code: 'pg_sslmode_weak',
    found: `${what}: sslmode=${target.sslmode} to ${hosts} verifies no certificate: whoever answers gets the session, and the password if it asks for it in clear`,
    fix: 'set sslmode=verify-full (with sslrootcert=<CA file>) in the URL',
  };
}

/** Every cluster URL and v1 project URL of the registry. */
export function registryTlsFindings(registry: ProjectRegistry, env: NodeJS.ProcessEnv): SecurityFinding[] {
  const out: SecurityFinding[] = [];
  for (const c of registry.clusters()) {
    const f = pgTlsFinding(`cluster ${c.name}`, c.url, env);
    if (f) out.push(f);
  }
  for (const p of registry.list()) {
    for (const [field, ref] of [
      ['databaseUrl', p.databaseUrl],
      ['dedicatedUrl', p.dedicatedUrl],
    ] as const) {
      if (!ref) continue;
      const f = pgTlsFinding(`project ${p.slug} ${field}`, ref, env);
      if (f) out.push(f);
    }
  }
  return out;
}

export interface PostureInputs {
  name: string;
  config: Pick<Config, 'FLUX_EVENT_SINKS'>;
  env?: NodeJS.ProcessEnv;
  registry?: ProjectRegistry;
}

/**
 * /readyz's cheap share of the audit: never a reason to be unready (a restart fixes none of it), a warning
 * listing each finding's code; `flux-ops doctor --security` has the whole audit.
 */
export function postureCheck(inputs: PostureInputs): ReadyCheck {
  return {
    name: 'security',
    optional: true,
    async run() {
      const findings = [
        ...(inputs.env ? [tlsRejectFinding(inputs.name, inputs.env)].filter((f) => f !== undefined) : []),
        ...sinkFindings(inputs.name, inputs.config),
        ...(inputs.registry && inputs.env ? registryTlsFindings(inputs.registry, inputs.env) : []),
      ];
      if (findings.length === 0)
        return { ok: true, detail: 'no posture warning (flux-ops doctor --security audits the rest)' };
      return {
        ok: false,
        warning: 'security_posture',
        detail: `${findings.map((f) => `${f.code}: ${f.found}`).join('; ')} (flux-ops doctor --security lists the fixes)`,
        findings: findings.map((f) => ({ severity: f.severity, code: f.code })),
      };
    },
  };
}
