// The probe's pure rules: which HTTP statuses are healthy, which bounded failure reason an error maps to
// (with the operator's next step), and the up/down state machine that turns results into transition
// events with flap suppression.

/** The bounded `reason` label of flux_probe_failures_total and of probe_failed events. */
export const FAILURE_REASONS = [
  'dns',
  'connect',
  'tls_verify',
  'tls_expired',
  'timeout',
  'status',
  'body',
] as const;
export type FailureReason = (typeof FAILURE_REASONS)[number];

export type ProbeMode = 'shallow' | 'deep';
export type Engine = 'v1_dedicated' | 'v2_shared';

/** The error code our own per-probe deadline destroys the request with. */
export const PROBE_TIMEOUT_CODE = 'FLUX_PROBE_TIMEOUT';

export interface StatusRule {
  /** FLUX_PROBE_EXPECTED_STATUS, inclusive ranges. */
  expected: ReadonlyArray<readonly [number, number]>;
  engine: Engine;
  /** The mode the request was actually sent in (deep only when a JWT went with it). */
  mode: ProbeMode;
}

/**
 * 2xx-3xx (or the configured ranges) are healthy. An unauthenticated (shallow) probe of a v2 tenant may
 * see 401 from the tenant API: the gateway routed it and the API answered, so it counts as healthy. A deep
 * probe sent a valid JWT, so a 401 there is a real failure.
 */
export function isHealthyStatus(status: number, rule: StatusRule): boolean {
  if (rule.expected.some(([lo, hi]) => status >= lo && status <= hi)) return true;
  return status === 401 && rule.engine === 'v2_shared' && rule.mode === 'shallow';
}

export interface Classified {
  reason: FailureReason;
  hint: string;
}

const DNS_CODES = new Set(['ENOTFOUND', 'EAI_AGAIN', 'EAI_FAIL', 'EAI_NODATA', 'EAI_NONAME']);
const TLS_EXPIRED_CODES = new Set(['CERT_HAS_EXPIRED', 'CERT_NOT_YET_VALID', 'ERR_TLS_CERT_EXPIRED']);
const TLS_VERIFY_CODES = new Set([
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'CERT_UNTRUSTED',
  'CERT_REJECTED',
  'CERT_SIGNATURE_FAILURE',
  'CERT_CHAIN_TOO_LONG',
  'INVALID_CA',
  'ERR_TLS_CERT_ALTNAME_INVALID',
]);
const TRUST_FIX =
  'add the issuing CA to the PEM file named by NODE_EXTRA_CA_CERTS (read once at process start, so restart) ' +
  'or to FLUX_PROBE_CA_FILE; never disable verification';

export interface ErrorFacts {
  /** errno / OpenSSL / Node error code. */
  code?: string | undefined;
  message?: string | undefined;
  /** Whether the response head had been received when the error happened. */
  afterHeaders: boolean;
  /** The tenant host (SNI and certificate identity) and where the request went. */
  host: string;
  target: string;
  timeoutMs?: number | undefined;
  /** The phase the request was in when it failed (for timeouts). */
  phase?: string | undefined;
}

/** Maps a request error to its bounded reason and an operator-grade hint. Branches on codes, not text. */
export function classifyError(facts: ErrorFacts): Classified {
  const code = facts.code ?? '';
  if (code === PROBE_TIMEOUT_CODE) {
    return {
      reason: 'timeout',
      hint:
        `no complete answer from ${facts.target} for ${facts.host} within FLUX_PROBE_TIMEOUT_MS` +
        `${facts.timeoutMs !== undefined ? ` (${facts.timeoutMs} ms)` : ''}` +
        `${facts.phase ? `, stuck in ${facts.phase}` : ''}: check the tenant API and the gateway's upstream`,
    };
  }
  if (TLS_EXPIRED_CODES.has(code)) {
    return {
      reason: 'tls_expired',
      hint:
        `the certificate the gateway serves for ${facts.host} is ${code === 'CERT_NOT_YET_VALID' ? 'not yet valid' : 'expired'} ` +
        `(${code}): renew it on the gateway; trusting its CA via NODE_EXTRA_CA_CERTS or FLUX_PROBE_CA_FILE does not ` +
        'make an expired certificate valid',
    };
  }
  if (code === 'ERR_TLS_CERT_ALTNAME_INVALID') {
    return {
      reason: 'tls_verify',
      hint: `the certificate served for SNI ${facts.host} does not name that host (${code}): serve a certificate covering it; if the CA is private, ${TRUST_FIX}`,
    };
  }
  if (TLS_VERIFY_CODES.has(code) || code.startsWith('ERR_SSL_') || code.startsWith('ERR_TLS_')) {
    return {
      reason: 'tls_verify',
      hint: `the certificate served for ${facts.host} is not trusted by this process (${code}): ${TRUST_FIX}`,
    };
  }
  if (DNS_CODES.has(code)) {
    return {
      reason: 'dns',
      hint: `cannot resolve the host of ${facts.target} (${code}): check FLUX_TENANT_PROBE_GATEWAY_URL and this process's DNS`,
    };
  }
  if (facts.afterHeaders) {
    return {
      reason: 'body',
      hint: `the response from ${facts.target} for ${facts.host} broke off while its body was read (${code || 'aborted'})`,
    };
  }
  return {
    reason: 'connect',
    hint: `cannot connect to ${facts.target} (${code || facts.message || 'connection failed'}): is the gateway up and FLUX_TENANT_PROBE_GATEWAY_URL right?`,
  };
}

export function statusHint(status: number, host: string, rule: StatusRule): string {
  const expected = rule.expected.map(([lo, hi]) => (lo === hi ? `${lo}` : `${lo}-${hi}`)).join(',');
  if (status === 404) {
    return `the gateway answered 404 for Host ${host}: the tenant is unknown to the gateway (not deployed, or apiHost in FLUX_PROJECTS_FILE is stale)`;
  }
  if (status === 401 && rule.mode === 'deep') {
    return `401 for Host ${host} with a minted JWT: the project's jwtSecret in FLUX_PROJECTS_FILE does not match the tenant's`;
  }
  return `status ${status} for Host ${host} is outside FLUX_PROBE_EXPECTED_STATUS (${expected})`;
}

// ---------------------------------------------------------------------------------------------------------
// Transitions with flap suppression

export type TenantStatus = 'unknown' | 'up' | 'down';

export interface TenantState {
  status: TenantStatus;
  consecutiveFailures: number;
  consecutiveSuccesses: number;
  /** When the current run of failures began (ms since epoch), for downSeconds. */
  failingSince?: number | undefined;
}

export const INITIAL_STATE: TenantState = {
  status: 'unknown',
  consecutiveFailures: 0,
  consecutiveSuccesses: 0,
};

export type Transition =
  | { kind: 'failed'; consecutive: number }
  | { kind: 'recovered'; consecutive: number; downSeconds?: number | undefined };

/**
 * Folds one result into the state. A tenant becomes `down` (event: failed) after `threshold` consecutive
 * failures from `unknown` or `up`, and `up` again (event: recovered) after `threshold` consecutive successes
 * from `down`. Leaving `unknown` by success is silent: a fresh process has nothing to recover from.
 */
export function nextState(
  state: TenantState,
  success: boolean,
  threshold: number,
  now: number,
): { state: TenantState; transition?: Transition } {
  if (success) {
    const successes = state.consecutiveSuccesses + 1;
    if (state.status === 'down') {
      if (successes >= threshold) {
        const downSeconds =
          state.failingSince !== undefined ? Math.max(0, (now - state.failingSince) / 1000) : undefined;
        return {
          state: { status: 'up', consecutiveFailures: 0, consecutiveSuccesses: successes },
          transition: { kind: 'recovered', consecutive: successes, downSeconds },
        };
      }
      return { state: { ...state, consecutiveFailures: 0, consecutiveSuccesses: successes } };
    }
    return { state: { status: 'up', consecutiveFailures: 0, consecutiveSuccesses: successes } };
  }
  const failures = state.consecutiveFailures + 1;
  const failingSince = state.consecutiveFailures === 0 ? now : state.failingSince;
  if (state.status === 'down') {
    // Still down: keep the start of the outage, not the start of this streak.
    return {
      state: {
        status: 'down',
        consecutiveFailures: failures,
        consecutiveSuccesses: 0,
        failingSince: state.failingSince ?? now,
      },
    };
  }
  if (failures >= threshold) {
    return {
      state: { status: 'down', consecutiveFailures: failures, consecutiveSuccesses: 0, failingSince },
      transition: { kind: 'failed', consecutive: failures },
    };
  }
  return {
    state: { status: state.status, consecutiveFailures: failures, consecutiveSuccesses: 0, failingSince },
  };
}
