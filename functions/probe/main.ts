// The probe process edge: config from the environment (it refuses to start when NODE_TLS_REJECT_UNAUTHORIZED is 0), CA trust
// read once, dependencies, serve, signals.
import { EXIT, isAppError } from '../../shared/errors.js';
import { createRuntime } from '../../shared/kit/runtime.js';
import { loadConfigOrExit, serveProcess } from '../../shared/kit/serve.js';
import { createApp } from './app.js';
import { loadTrust, type Trust } from './trust.js';

const config = loadConfigOrExit(process.env);
let trust: Trust;
try {
  trust = loadTrust({ env: process.env, caFile: config.FLUX_PROBE_CA_FILE });
} catch (error) {
  process.stderr.write(`flux-ops: ${isAppError(error) ? error.message : String(error)}\n`);
  process.exit(EXIT.config);
}
const rt = createRuntime('probe', config, process.env);
const fn = createApp(rt, { trust });
await serveProcess({
  fetch: fn.app.fetch,
  port: config.FLUX_PROBE_PORT,
  host: config.FLUX_HOST,
  log: rt.log,
  config,
  graceMs: config.FLUX_SHUTDOWN_GRACE_MS,
  start: fn.start,
  stop: fn.stop,
});
