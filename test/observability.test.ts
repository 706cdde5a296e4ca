// Logs and metrics as a collector reads them from the real all-in-one process: one `fn` per JSON log line,
// one scrape path for the whole process, prom-client's default metrics under their own names, and every
// metric of flux-ops under flux_ except the blackbox_exporter names probe keeps on purpose.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createAllInOne } from '../functions/all/app.js';
import { createRouter } from '../functions/router/app.js';
import { FUNCTION_NAMES } from '../shared/config.js';
import { silentLogger } from '../shared/log.js';
import { BLACKBOX_METRIC_NAMES, createRegistry, DEFAULT_METRIC_PREFIXES } from '../shared/metrics.js';
import { createStaticRegistry } from '../shared/registry.js';
import { type ChildFunction, startAllInOneProcess } from './support/hardening.js';
import { ADMIN, eventually, makeTestEnv, type TestEnv } from './support/runtime.js';

let env: TestEnv;
let child: ChildFunction;

/** The metric names of a Prometheus text exposition (from its # TYPE lines). */
const metricNames = (text: string) => [...text.matchAll(/^# TYPE (\S+) /gm)].map((m) => m[1]!);

beforeAll(async () => {
  env = await makeTestEnv({
    FLUX_VERIFY_DRIVER: 'local',
    FLUX_PROBE_INTERVAL_MS: '0',
    FLUX_LOG_LEVEL: 'info',
  });
  child = await startAllInOneProcess(env.env);
});
afterAll(async () => {
  await child?.stop();
  await env?.cleanup();
});

describe('logs of the all-in-one process', () => {
  it('carry exactly one fn key per JSON line, the function’s own for its lines', async () => {
    // An authenticated request to one function writes its access line; start-up wrote the rest.
    expect((await fetch(`${child.url}/dump/events/dead`, { headers: ADMIN.header })).status).toBe(200);
    await eventually(() => child.stdout().includes('"msg":"access"'));
    const lines = child
      .stdout()
      .split('\n')
      .filter((l) => l.startsWith('{'));
    expect(lines.some((l) => l.includes('"msg":"listening"'))).toBe(true);
    // JSON.parse keeps the last of two equal keys, so the raw line is what is counted.
    const repeated = lines.filter((l) => (l.match(/"fn":/g) ?? []).length > 1);
    expect(repeated).toEqual([]);
    const access = lines.map((l) => JSON.parse(l) as Record<string, unknown>).find((l) => l.msg === 'access');
    expect(access).toMatchObject({ fn: 'dump', tokenId: ADMIN.id });
  });
});

describe('metrics of the all-in-one process', () => {
  it('one scrape path: GET /metrics has every function’s series once; /<fn>/metrics is no route', async () => {
    const res = await fetch(`${child.url}/metrics`);
    expect(res.status).toBe(200);
    const text = await res.text();
    const names = metricNames(text);
    expect(new Set(names).size).toBe(names.length);
    const samples = text.split('\n').filter((l) => l !== '' && !l.startsWith('#'));
    expect(new Set(samples.map((l) => l.replace(/ \S+$/, ''))).size).toBe(samples.length);
    expect(names).toEqual(
      expect.arrayContaining(['flux_http_requests_total', 'flux_verify_queue', 'probe_success']),
    );
    for (const fn of FUNCTION_NAMES) {
      const per = await fetch(`${child.url}/${fn}/metrics`);
      expect(per.status, fn).toBe(404);
      expect(await per.json()).toMatchObject({
        code: 'not_found',
        error: expect.stringMatching(/GET \/metrics/),
      });
    }
  });

  it('process metrics keep prom-client’s names; every other metric is under flux_ or a blackbox name', async () => {
    const names = metricNames(await (await fetch(`${child.url}/metrics`)).text());
    expect(names).toEqual(
      expect.arrayContaining([
        'process_cpu_user_seconds_total',
        'process_resident_memory_bytes',
        'nodejs_eventloop_lag_seconds',
        'nodejs_heap_size_used_bytes',
      ]),
    );
    const stray = names.filter(
      (n) =>
        !n.startsWith('flux_') &&
        !DEFAULT_METRIC_PREFIXES.some((p) => n.startsWith(p)) &&
        !(BLACKBOX_METRIC_NAMES as readonly string[]).includes(n),
    );
    expect(stray).toEqual([]);
  });

  it('so does every metric a function or the router registers in-process', async () => {
    const registry = createRegistry({ defaultMetrics: false });
    const all = createAllInOne(env.config, env.env, {
      log: silentLogger(),
      metrics: registry,
      registry: createStaticRegistry({ projects: [], clusters: [] }),
    });
    createRouter({
      upstreams: Object.fromEntries(FUNCTION_NAMES.map((f) => [f, 'http://127.0.0.1:9'])) as never,
      log: silentLogger(),
      metrics: registry,
    });
    expect(all.functions.probe).toBeDefined();
    const names = registry.getMetricsAsArray().map((m) => m.name);
    expect(names.length).toBeGreaterThan(20);
    expect(
      names.filter(
        (n) => !n.startsWith('flux_') && !(BLACKBOX_METRIC_NAMES as readonly string[]).includes(n),
      ),
    ).toEqual([]);
  });
});
