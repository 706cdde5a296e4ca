import { describe, expect, it } from 'vitest';
import {
  classifyError,
  type ErrorFacts,
  FAILURE_REASONS,
  INITIAL_STATE,
  isHealthyStatus,
  nextState,
  PROBE_TIMEOUT_CODE,
  type StatusRule,
  statusHint,
  type TenantState,
  type Transition,
} from './rules.js';

const DEFAULT: StatusRule['expected'] = [[200, 399]];

describe('isHealthyStatus', () => {
  it('counts 2xx-3xx healthy and the rest not', () => {
    const rule: StatusRule = { expected: DEFAULT, engine: 'v1_dedicated', mode: 'shallow' };
    for (const s of [200, 204, 301, 399]) expect(isHealthyStatus(s, rule)).toBe(true);
    for (const s of [199, 400, 401, 404, 500, 503]) expect(isHealthyStatus(s, rule)).toBe(false);
  });

  it('lets an unauthenticated probe of a v2 tenant count 401 as healthy, only in shallow mode', () => {
    expect(isHealthyStatus(401, { expected: DEFAULT, engine: 'v2_shared', mode: 'shallow' })).toBe(true);
    expect(isHealthyStatus(401, { expected: DEFAULT, engine: 'v2_shared', mode: 'deep' })).toBe(false);
    expect(isHealthyStatus(403, { expected: DEFAULT, engine: 'v2_shared', mode: 'shallow' })).toBe(false);
    expect(isHealthyStatus(401, { expected: DEFAULT, engine: 'v1_dedicated', mode: 'shallow' })).toBe(false);
  });

  it('honours configured ranges and single codes', () => {
    const rule: StatusRule = {
      expected: [
        [200, 200],
        [401, 401],
      ],
      engine: 'v1_dedicated',
      mode: 'deep',
    };
    expect(isHealthyStatus(200, rule)).toBe(true);
    expect(isHealthyStatus(401, rule)).toBe(true);
    expect(isHealthyStatus(204, rule)).toBe(false);
    expect(isHealthyStatus(302, rule)).toBe(false);
  });
});

describe('classifyError', () => {
  const base: ErrorFacts = {
    afterHeaders: false,
    host: 'api--a--0a1b2c3.flux.test',
    target: 'https://gw:443',
  };
  const cases: Array<[string, Partial<ErrorFacts>, string]> = [
    ['ENOTFOUND', {}, 'dns'],
    ['EAI_AGAIN', {}, 'dns'],
    ['ECONNREFUSED', {}, 'connect'],
    ['ECONNRESET', {}, 'connect'],
    ['EHOSTUNREACH', {}, 'connect'],
    ['ECONNRESET', { afterHeaders: true }, 'body'],
    ['CERT_HAS_EXPIRED', {}, 'tls_expired'],
    ['CERT_NOT_YET_VALID', {}, 'tls_expired'],
    ['UNABLE_TO_VERIFY_LEAF_SIGNATURE', {}, 'tls_verify'],
    ['SELF_SIGNED_CERT_IN_CHAIN', {}, 'tls_verify'],
    ['DEPTH_ZERO_SELF_SIGNED_CERT', {}, 'tls_verify'],
    ['ERR_TLS_CERT_ALTNAME_INVALID', {}, 'tls_verify'],
    ['ERR_SSL_WRONG_VERSION_NUMBER', {}, 'tls_verify'],
    [PROBE_TIMEOUT_CODE, {}, 'timeout'],
    [PROBE_TIMEOUT_CODE, { afterHeaders: true }, 'timeout'],
  ];
  for (const [code, facts, reason] of cases) {
    it(`${code}${facts.afterHeaders ? ' after headers' : ''} → ${reason}`, () => {
      const c = classifyError({ ...base, ...facts, code });
      expect(c.reason).toBe(reason);
      expect(FAILURE_REASONS).toContain(c.reason);
    });
  }

  it('names NODE_EXTRA_CA_CERTS in every TLS hint and never suggests disabling verification by flag', () => {
    for (const code of [
      'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
      'CERT_HAS_EXPIRED',
      'ERR_TLS_CERT_ALTNAME_INVALID',
    ]) {
      const { hint } = classifyError({ ...base, code });
      expect(hint).toContain('NODE_EXTRA_CA_CERTS');
      expect(hint).toContain(base.host);
      expect(hint).not.toMatch(/NODE_TLS_REJECT_UNAUTHORIZED|rejectUnauthorized/);
    }
    expect(classifyError({ ...base, code: 'ECONNREFUSED' }).hint).not.toContain('NODE_EXTRA_CA_CERTS');
  });

  it('says which phase a timeout was stuck in', () => {
    const { hint } = classifyError({
      ...base,
      code: PROBE_TIMEOUT_CODE,
      timeoutMs: 250,
      phase: 'processing',
    });
    expect(hint).toContain('FLUX_PROBE_TIMEOUT_MS (250 ms)');
    expect(hint).toContain('processing');
  });
});

describe('statusHint', () => {
  it('explains 404 as a tenant unknown to the gateway and deep 401 as a secret mismatch', () => {
    const rule: StatusRule = { expected: DEFAULT, engine: 'v2_shared', mode: 'deep' };
    expect(statusHint(404, 'h.test', rule)).toMatch(/unknown to the gateway/);
    expect(statusHint(401, 'h.test', rule)).toMatch(/jwtSecret/);
    expect(statusHint(503, 'h.test', rule)).toMatch(/FLUX_PROBE_EXPECTED_STATUS \(200-399\)/);
  });
});

/** Feeds a sequence of results (true = success) and collects the transitions, one slot per result. */
function run(sequence: boolean[], threshold: number): { final: TenantState; events: Array<string | null> } {
  let state = INITIAL_STATE;
  const events: Array<string | null> = [];
  sequence.forEach((ok, i) => {
    const next: { state: TenantState; transition?: Transition } = nextState(state, ok, threshold, i * 1000);
    state = next.state;
    events.push(next.transition?.kind ?? null);
  });
  return { final: state, events };
}

describe('nextState (flap suppression)', () => {
  it('stays silent when a fresh process sees a healthy tenant (no "recovered" at start-up)', () => {
    const { final, events } = run([true, true, true], 2);
    expect(events).toEqual([null, null, null]);
    expect(final.status).toBe('up');
  });

  it('reports failed from unknown after N consecutive failures, once', () => {
    const { final, events } = run([false, false, false, false], 3);
    expect(events).toEqual([null, null, 'failed', null]);
    expect(final).toMatchObject({ status: 'down', consecutiveFailures: 4 });
  });

  it('suppresses flaps shorter than the threshold in both directions', () => {
    const { events } = run([true, false, true, false, false, true, false, true, true], 2);
    //                      up    1     reset  1     down   1     reset  1     up
    expect(events).toEqual([null, null, null, null, 'failed', null, null, null, 'recovered']);
  });

  it('with threshold 1 every change is a transition', () => {
    expect(run([true, false, true, false], 1).events).toEqual([null, 'failed', 'recovered', 'failed']);
  });

  it('measures downSeconds from the first failure of the outage', () => {
    let state = INITIAL_STATE;
    state = nextState(state, true, 2, 0).state;
    state = nextState(state, false, 2, 10_000).state;
    state = nextState(state, false, 2, 20_000).state; // down
    state = nextState(state, true, 2, 30_000).state;
    state = nextState(state, false, 2, 40_000).state; // still down, outage continues
    state = nextState(state, true, 2, 50_000).state;
    const last = nextState(state, true, 2, 70_000);
    expect(last.transition).toEqual({ kind: 'recovered', consecutive: 2, downSeconds: 60 });
  });
});
