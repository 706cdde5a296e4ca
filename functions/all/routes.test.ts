import { describe, expect, it } from 'vitest';
import { routeOf } from './routes.js';

describe('front-door routing', () => {
  it.each([
    ['/api/cli/v1/projects/0a1b2c3/backups', 'dump', '/api/cli/v1/projects/0a1b2c3/backups'],
    [
      '/api/cli/v1/projects/0a1b2c3/backups/01J/download',
      'dump',
      '/api/cli/v1/projects/0a1b2c3/backups/01J/download',
    ],
    [
      '/api/cli/v1/projects/0a1b2c3/backups/01J/verify',
      'verify',
      '/api/cli/v1/projects/0a1b2c3/backups/01J/verify',
    ],
    [
      '/api/cli/v1/projects/0a1b2c3/backups/01J/restore',
      'restore',
      '/api/cli/v1/projects/0a1b2c3/backups/01J/restore',
    ],
    ['/api/cli/v1/projects/0a1b2c3/restores/01J', 'restore', '/api/cli/v1/projects/0a1b2c3/restores/01J'],
    ['/api/cli/v1/migrate', 'migrate', '/api/cli/v1/migrate'],
    ['/api/cli/v1/migrate/0a1b2c3', 'migrate', '/api/cli/v1/migrate/0a1b2c3'],
    ['/api/cli/v1/projects/0a1b2c3', 'migrate', '/api/cli/v1/projects/0a1b2c3'],
    ['/api/cli/v1/projects/0a1b2c3/', 'dump', '/api/cli/v1/projects/0a1b2c3/'],
    ['/api/ops/v1/status', 'dump', '/api/ops/v1/status'],
    ['/probes/run', 'probe', '/probes/run'],
    ['/replicate/events', 'replicate', '/events'],
    ['/verify/readyz', 'verify', '/readyz'],
    ['/dump', 'dump', '/'],
    ['/restore/readyz', 'restore', '/readyz'],
  ])('%s → %s %s', (path, fn, inner) => {
    expect(routeOf(path)).toEqual({ fn, path: inner });
  });

  it.each(['/', '/healthz', '/etc/passwd', '/api/cli/v2/projects', '/dumpster/x', '/api/cli/v1/migrate/a/b'])(
    '%s belongs to no function',
    (path) => {
      expect(routeOf(path)).toBeUndefined();
    },
  );
});
