// The probe process edge: config from the environment (it refuses to start when
// NODE_TLS_REJECT_UNAUTHORIZED is 0), CA trust read once (an unreadable CA file exits 78), serve, signals.
import { runFunction } from '../../shared/kit/serve.js';
import { createApp } from './app.js';
import { loadTrust } from './trust.js';

await runFunction('probe', (rt, config) =>
  createApp(rt, { trust: loadTrust({ env: process.env, caFile: config.FLUX_PROBE_CA_FILE }) }),
);
