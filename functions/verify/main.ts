// The verify process edge: config from the environment, dependencies, serve, signals.
import { createRuntime } from '../../shared/kit/runtime.js';
import { loadConfigOrExit, serveProcess } from '../../shared/kit/serve.js';
import { createApp } from './app.js';

const config = loadConfigOrExit(process.env);
const rt = createRuntime('verify', config, process.env);
const fn = createApp(rt);
await serveProcess({
  fetch: fn.app.fetch,
  port: config.FLUX_VERIFY_PORT,
  host: config.FLUX_HOST,
  log: rt.log,
  config,
  graceMs: config.FLUX_SHUTDOWN_GRACE_MS,
  start: fn.start,
  stop: fn.stop,
});
