// The restore process edge: config from the environment, dependencies, serve, signals.
import { runFunction } from '../../shared/kit/serve.js';
import { createApp } from './app.js';

await runFunction('restore', (rt) => createApp(rt));
