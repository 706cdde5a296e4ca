// The all-in-one process edge (npm start): embedded defaults (data under ./.flux-data, loopback), all
// five functions on FLUX_PORT.
import { FUNCTION_NAMES } from '../../shared/config.js';
import { acquireOwnerLocks } from '../../shared/kit/owner-lock.js';
import { exitWithStartupError, loadConfigOrExit, serveProcess } from '../../shared/kit/serve.js';
import { createLogger } from '../../shared/log.js';
import { createAllInOne } from './app.js';

const config = loadConfigOrExit(process.env, { profile: 'embedded' });
// No `fn` of its own: each mounted function's child logger binds one (one `fn` per line).
const log = createLogger('flux-ops', { level: config.FLUX_LOG_LEVEL, fn: null });
// Every function's lock, before anything touches FLUX_STATE_DIR or the backup root: a second all-in-one
// (or a separate process of any function) on the same directories exits here, having changed nothing.
await acquireOwnerLocks(config, FUNCTION_NAMES, { log }).catch((error: unknown) =>
  exitWithStartupError('all', error),
);
const all = createAllInOne(config, process.env, { log });
all.setBaseUrl(`http://127.0.0.1:${config.FLUX_PORT}`);
await serveProcess({
  name: 'all',
  fetch: all.app.fetch,
  port: config.FLUX_PORT,
  portVariable: 'FLUX_PORT',
  host: config.FLUX_HOST,
  log,
  config,
  graceMs: config.FLUX_SHUTDOWN_GRACE_MS,
  start: all.start,
  stop: all.stop,
  registry: all.registry,
});
