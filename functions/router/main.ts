// The router process edge: config from the environment, the front door on FLUX_PORT, signals. On SIGTERM
// it stops accepting, lets forwarded requests (downloads included) finish within FLUX_SHUTDOWN_GRACE_MS,
// then closes its upstream connections.
import { loadConfigOrExit, serveProcess } from '../../shared/kit/serve.js';
import { createLogger } from '../../shared/log.js';
import { createRegistry } from '../../shared/metrics.js';
import { createRouter, upstreamsOf } from './app.js';

const config = loadConfigOrExit(process.env);
const log = createLogger('router', { level: config.FLUX_LOG_LEVEL });
const router = createRouter({ upstreams: upstreamsOf(config), log, metrics: createRegistry() });
await serveProcess({
  name: 'router',
  fetch: router.app.fetch,
  port: config.FLUX_PORT,
  portVariable: 'FLUX_PORT',
  host: config.FLUX_HOST,
  log,
  config,
  graceMs: config.FLUX_SHUTDOWN_GRACE_MS,
  start: async () => {
    log.info({ upstreams: upstreamsOf(config) }, 'forwarding to');
  },
  stop: () => router.close(config.FLUX_SHUTDOWN_GRACE_MS),
});
