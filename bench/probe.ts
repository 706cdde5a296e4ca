// probe: one on-demand cycle over many tenants (default 1,000) through a local TLS gateway that routes
// by Host and serves a certificate per SNI from a CA made for this run; wall seconds of the cycle and
// CPU seconds of the probe process.
import { randomBytes, randomUUID } from 'node:crypto';
import type { TenantProbe } from '../functions/probe/monitor.js';
import { freePort } from '../test/support/pg.js';
import { createCa, destroyCa, issueCert, startTlsGateway } from '../test/support/tls.js';
import { type BenchContext, type RegistryProject, writeRegistry } from './context.js';
import { summarize } from './stats.js';
import { cpuSecondsOf, defer, MB, memoryOf, resetPeak, startFunction } from './support.js';

const DOMAIN = 'flux.bench';

export async function benchProbe(ctx: BenchContext): Promise<void> {
  const { options } = ctx;
  const ca = await createCa('flux-ops bench CA');
  const releaseCa = defer('bench CA', () => destroyCa(ca));
  const cert = await issueCert(ca, { hosts: [`*.${DOMAIN}`] });
  const body = JSON.stringify({ ok: true });
  const gateway = await startTlsGateway({
    cert,
    routes: {
      [`*.${DOMAIN}`]: (_req, res) => {
        res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
        res.end(body);
      },
    },
  });
  const releaseGateway = defer('TLS gateway', () => gateway.close());

  const dirs = await ctx.dirs('probe');
  const projects: RegistryProject[] = [];
  const hashes = new Set<string>();
  while (projects.length < options.tenants) {
    const hash = randomBytes(4).toString('hex').slice(0, 7);
    if (hashes.has(hash)) continue;
    hashes.add(hash);
    const slug = `tenant-${String(projects.length).padStart(4, '0')}`;
    projects.push({
      id: randomUUID(),
      hash,
      slug,
      engine: 'v1_dedicated',
      // Never connected to: probes only need the apiHost.
      databaseUrl: 'postgres://flux@127.0.0.1:1/unused',
      apiHost: `api--${slug}--${hash}.${DOMAIN}`,
    });
  }
  await writeRegistry(dirs.projects, { projects });

  const port = await freePort();
  const proc = await startFunction({
    main: 'probe',
    port,
    ready: true,
    env: ctx.env(dirs, {
      FLUX_PROBE_PORT: String(port),
      FLUX_TENANT_PROBE_GATEWAY_URL: gateway.url,
      FLUX_PROBE_CA_FILE: ca.certPath,
      FLUX_PROBE_INTERVAL_MS: '0',
    }),
  });
  try {
    const cycles: number[] = [];
    const cpu: number[] = [];
    const peaks: number[] = [];
    ctx.say(`probe: ${options.tenants} tenants through a TLS gateway, ${options.rounds} cycles`);
    for (let i = 0; i < options.warmup + options.rounds; i++) {
      await resetPeak(proc.pid);
      const cpuBefore = await cpuSecondsOf(proc.pid);
      const started = performance.now();
      const res = await fetch(`${proc.url}/probes/run`, { method: 'POST', headers: ctx.token.header });
      const { results } = (await res.json()) as { results: TenantProbe[] };
      const elapsed = (performance.now() - started) / 1000;
      const used = (await cpuSecondsOf(proc.pid)) - cpuBefore;
      const failed = results.filter((r) => !r.success);
      if (res.status !== 200 || results.length !== options.tenants || failed.length > 0) {
        throw new Error(
          `probe cycle: HTTP ${res.status}, ${results.length} results, ${failed.length} failed (${failed[0]?.reason}: ${failed[0]?.error?.message})`,
        );
      }
      if (i >= options.warmup) {
        cycles.push(elapsed);
        cpu.push(used);
        peaks.push((await memoryOf(proc.pid)).peak / MB);
      }
    }
    const peakRssMb = Math.max(...peaks);
    const tenants = options.tenants.toLocaleString('en-US');
    ctx.record({
      id: 'probe.cycle',
      group: 'probe',
      name: `probe cycle, ${tenants} tenants (TLS, SNI per tenant)`,
      unit: 's',
      fn: summarize(cycles),
      peakRssMb,
      details: { tenants: options.tenants },
    });
    ctx.record({
      id: 'probe.cpu',
      group: 'probe',
      name: `probe CPU per cycle, ${tenants} tenants`,
      unit: 's CPU',
      fn: summarize(cpu),
      peakRssMb,
    });
  } finally {
    await proc.stop();
    await releaseGateway();
    await releaseCa();
  }
}
