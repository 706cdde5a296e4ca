// The status room's API, beside the page that reads it (page.ts): every project's trust from the read
// model (tier, message, next, labels, its newest backup's row, freshness, findings) with its schedule, and
// the cheap registry lookup the CLI turns a slug into a hash with (no catalog read). Dump hosts both: it
// is the process that holds the catalog in every deployment.
import type { ProjectsAnswer, StatusAnswer } from '../../../shared/api-types.js';
import type { Kit } from '../../../shared/kit/app.js';
import type { Runtime } from '../../../shared/kit/runtime.js';
import { backupPolicyOf } from '../../../shared/schedule.js';

export function registerStatusApi(kit: Pick<Kit, 'app' | 'requireScope'>, rt: Runtime): void {
  const { app, requireScope } = kit;
  const { catalog, registry, config } = rt;

  app.get('/api/ops/v1/projects', requireScope('backups:read'), (c) =>
    c.json({
      projects: registry.list().map((p) => ({ id: p.id, slug: p.slug, hash: p.hash, engine: p.engine })),
    } satisfies ProjectsAnswer),
  );

  app.get('/api/ops/v1/status', requireScope('backups:read'), async (c) => {
    const projects: StatusAnswer['projects'] = [];
    for (const project of registry.list()) {
      const policy = backupPolicyOf(project, config);
      projects.push({
        id: project.id,
        slug: project.slug,
        hash: project.hash,
        engine: project.engine,
        schedule: policy.schedule?.text ?? null,
        ...(await catalog.trust(project.id, project.slug, new Date(), { maxAgeMs: policy.maxAgeMs })),
      });
    }
    return c.json({ projects } satisfies StatusAnswer);
  });
}
