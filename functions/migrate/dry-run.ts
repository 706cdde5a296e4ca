// The dry run of a migration: preflight and the plan, never gated, with no side effect anywhere.
import type { Runtime } from '../../shared/kit/runtime.js';
import type { Project } from '../../shared/registry.js';
import type { MigrateAnswer, MigrateOptions } from './answer.js';
import { type Ends, endsOf, whereOf } from './ends.js';
import { backupGate } from './gate.js';
import { planSteps, totalRows } from './plan.js';
import { type Preflight, runPreflight, toolSummary } from './preflight.js';

export async function dryRun(
  rt: Pick<Runtime, 'config' | 'env' | 'registry' | 'catalog'>,
  project: Project,
  options: MigrateOptions,
): Promise<MigrateAnswer> {
  const ends = endsOf(rt, project);
  const started = performance.now();
  const pf = await runPreflight(rt, project, ends, {
    counts: true,
    dumpOnly: options.dumpOnly,
    timeoutMs: rt.config.FLUX_MIGRATE_TIMEOUT_MS,
    inspectTarget: true,
  });
  const gate = { skipped: options.skipBackupCheck, ...(await backupGate(rt, project)) };
  const tables = pf.source.counts?.tables ?? [];
  const sequences = pf.source.counts?.sequences ?? [];
  const problems: Array<{ code: string; message: string }> = options.dumpOnly ? [] : [...pf.problems];
  if (!options.dumpOnly && pf.targetError) {
    problems.unshift({ code: 'target_unreachable', message: pf.targetError.message });
  }
  if (!gate.passes && !options.skipBackupCheck) {
    problems.push({
      code: 'backup_gate',
      message: `${project.slug} on cluster ${gate.cluster}: ${gate.message}${gate.next ? `: run \`${gate.next}\`` : ''} (or pass skipBackupCheck)`,
    });
  }
  return {
    status: 200,
    body: {
      ok: true,
      dryRun: true,
      ready: problems.length === 0,
      problems,
      project: { id: project.id, slug: project.slug, hash: project.hash },
      source: {
        cluster: ends.cluster,
        ...whereOf(ends.sourceUrl),
        serverVersion: pf.source.server.serverVersion,
        schema: ends.schema,
      },
      target: targetSummary(pf, ends),
      tools: toolSummary(pf.tools),
      tables,
      rows: totalRows(tables),
      sequences,
      extensions: pf.source.inventory?.extensions ?? [],
      roles: pf.source.inventory?.roles ?? [],
      backupGate: gate,
      steps: planSteps({ dumpOnly: options.dumpOnly, lockWrites: options.lockWrites, schema: ends.schema }),
      seconds: (performance.now() - started) / 1000,
    },
  };
}

function targetSummary(pf: Preflight, ends: Ends) {
  const t = pf.target;
  const where = whereOf(ends.targetUrl);
  if (!t) return { ...where, reachable: false, error: pf.targetError?.message };
  const installed = new Set(t.extensions.installed);
  const available = new Set(t.extensions.available);
  return {
    ...where,
    reachable: true,
    serverVersion: t.server.serverVersion,
    user: t.user,
    schema: { name: ends.schema, ...t.schema },
    roles: t.roles,
    authenticatorMemberships: t.memberships,
    auth: t.auth,
    extensions: (pf.source.inventory?.extensions ?? []).map((e) => ({
      name: e.name,
      sourceVersion: e.version,
      target: installed.has(e.name) ? 'installed' : available.has(e.name) ? 'available' : 'missing',
    })),
  };
}
