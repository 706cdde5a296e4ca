// The replicate process edge: config from the environment, the offsite store it selects (a driver this
// build lacks, or a half-configured one, exits non-zero saying so), serve, signals.
import { runFunction } from '../../shared/kit/serve.js';
import { createApp } from './app.js';

await runFunction('replicate', (rt) => createApp(rt));
