// The all-in-one process edge (npm start): embedded defaults (data under ./.flux-data, loopback), all
// six functions on FLUX_PORT. On loopback without FLUX_API_TOKENS it makes a dev token for this run.
import { FUNCTION_NAMES } from '../../shared/config.js';
import { acquireOwnerLocks } from '../../shared/kit/owner-lock.js';
import { exitWithStartupError, loadConfigOrExit, serveProcess } from '../../shared/kit/serve.js';
import { createLogger } from '../../shared/log.js';
import { createFileRegistry, type ReloadableRegistry } from '../../shared/registry.js';
import { STATUS_PATH } from '../dump/status/page.js';
import { type AllInOne, createAllInOne } from './app.js';
import { devTokenFor, devTokenNotice, loopbackBase, NO_TOKENS_WARNING } from './dev-token.js';

const loaded = loadConfigOrExit(process.env, { profile: 'embedded' });
// No `fn` of its own: each mounted function's child logger binds one (one `fn` per line).
const log = createLogger('flux-ops', { level: loaded.FLUX_LOG_LEVEL, fn: null });
// The token itself stays in this scope; the config (and so the start-up log line) holds only its hash,
// shown there as dev:[redacted]:admin.
const dev = devTokenFor(loaded);
const config = dev ? { ...loaded, FLUX_API_TOKENS: [dev.entry] } : loaded;
if (!dev && loaded.FLUX_API_TOKENS.length === 0) log.warn(NO_TOKENS_WARNING);
// Every function's lock, before anything touches FLUX_STATE_DIR or the backup root: a second all-in-one
// (or a separate process of any function) on the same directories exits here, having changed nothing.
await acquireOwnerLocks(config, FUNCTION_NAMES, { log }).catch((error: unknown) =>
  exitWithStartupError('all', error),
);
// The registry is read now (a bad file stops start-up here); the functions are built once the port is
// bound, so a port in use stops the process before any of them logs or touches a directory.
let registry: ReloadableRegistry;
try {
  registry = createFileRegistry(config.FLUX_PROJECTS_FILE, { log });
} catch (error) {
  exitWithStartupError('all', error);
}
let all: AllInOne | undefined;
await serveProcess({
  name: 'all',
  fetch: (request) => all!.app.fetch(request),
  port: config.FLUX_PORT,
  portVariable: 'FLUX_PORT',
  host: config.FLUX_HOST,
  log,
  config,
  graceMs: config.FLUX_SHUTDOWN_GRACE_MS,
  start: async () => {
    all = createAllInOne(config, process.env, { log, registry });
    all.setBaseUrl(`http://127.0.0.1:${config.FLUX_PORT}`);
    await all.start();
    // Only once the port is ours and start-up is done: a process that exits early shows no token.
    if (dev)
      process.stderr.write(
        devTokenNotice(dev.token, loopbackBase(config.FLUX_HOST, config.FLUX_PORT), STATUS_PATH),
      );
  },
  stop: async () => {
    await all?.stop();
  },
  registry,
});
