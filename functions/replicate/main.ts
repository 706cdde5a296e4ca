// The replicate process edge: config from the environment, the offsite store it selects, serve, signals.
import { EXIT, isAppError } from '../../shared/errors.js';
import { createRuntime, type FunctionApp } from '../../shared/kit/runtime.js';
import { loadConfigOrExit, serveProcess } from '../../shared/kit/serve.js';
import { createApp } from './app.js';

const config = loadConfigOrExit(process.env);
const rt = createRuntime('replicate', config, process.env);
let fn: FunctionApp;
try {
  fn = createApp(rt);
} catch (error) {
  // e.g. FLUX_BACKUPS_OFFSITE_DIR selects a driver this build does not have: say so, exit non-zero.
  process.stderr.write(`flux-ops replicate: ${isAppError(error) ? error.message : String(error)}\n`);
  process.exit(isAppError(error) ? error.exitCode : EXIT.software);
}
await serveProcess({
  fetch: fn.app.fetch,
  port: config.FLUX_REPLICATE_PORT,
  host: config.FLUX_HOST,
  log: rt.log,
  config,
  graceMs: config.FLUX_SHUTDOWN_GRACE_MS,
  start: fn.start,
  stop: fn.stop,
});
