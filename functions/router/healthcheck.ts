// The image's HEALTHCHECK: GET /healthz (liveness) of whichever process this container runs (FLUX_FUNCTION),
// on the port the config module gives it, so the healthcheck and the listener cannot disagree. Exit 0 =
// healthy. Liveness, not readiness: /readyz fails for what a restart cannot fix (a tool, a gateway, a
// peer function down), and an unhealthy container would hold back a deployment that works. `--ready`
// asks /readyz instead (a deploy script that waits for a ready stack).
import { loadConfig, portOf } from '../../shared/config.js';

const TIMEOUT_MS = 4_000;

async function check(): Promise<number> {
  const config = loadConfig(process.env);
  const fn = config.FLUX_FUNCTION;
  if (!fn) {
    process.stderr.write(
      'healthcheck: FLUX_FUNCTION is not set (dump, replicate, verify, probe, migrate, router, all)\n',
    );
    return 1;
  }
  const port = portOf(config, fn === 'router' ? 'all' : fn);
  // A wildcard listener answers on loopback; a specific FLUX_HOST is asked directly.
  const host = ['0.0.0.0', '::', ''].includes(config.FLUX_HOST) ? '127.0.0.1' : config.FLUX_HOST;
  const route = process.argv.includes('--ready') ? '/readyz' : '/healthz';
  const url = `http://${host.includes(':') ? `[${host}]` : host}:${port}${route}`;
  const res = await fetch(url, { signal: AbortSignal.timeout(TIMEOUT_MS) });
  if (res.ok) return 0;
  const body = (await res.text()).slice(0, 2000);
  process.stderr.write(`healthcheck: ${url} answered ${res.status}: ${body}\n`);
  return 1;
}

check().then(
  (code) => process.exit(code),
  (error: unknown) => {
    process.stderr.write(`healthcheck: ${(error as Error).message}\n`);
    process.exit(1);
  },
);
