// flux-ops catalog rebuild: the local catalog rebuilt from the offsite store's manifests
// (POST /api/ops/v1/catalog/rebuild), for a fresh host after the control-plane host was lost.
import { AppError, exitCodeFor } from '../shared/errors.js';
import { bool, PROJECT_OPTIONS, projectRef, str } from './args.js';
import { type Command, Failure } from './command.js';
import { printJson, println, table } from './output.js';
import { resolveProject } from './project.js';

interface RebuildAnswer {
  store: string;
  warnings?: string[];
  projects: number;
  manifests: { added: number; present: number; conflicts: number; invalid: number };
  added: Array<{ projectId: string; backupId: string; offsiteDump: string }>;
  conflicts: Array<{ projectId: string; backupId: string; reason: string }>;
  invalid: Array<{ projectId: string; backupId: string; key: string; reason: string }>;
  seconds: number;
}

const rebuild: Command = {
  name: 'catalog rebuild',
  summary: 'rebuild the local catalog from the offsite store’s manifests (a fresh host)',
  help: `Usage: flux-ops catalog rebuild --from offsite [-p <slug> | --hash <7hex>] [--allow-unsigned]

Writes every manifest the offsite store holds and the local catalog lacks (all projects, or one), so the
backups are listed, verified and restored again with --source offsite. A local manifest is never
replaced (one that differs is reported as a conflict), a refused offsite manifest (not a manifest,
another backup's) is reported as invalid and not written, and no dump is copied: the local artifact stays
missing. With FLUX_MANIFEST_SECRETS set on the server, a manifest whose tag no key gives is invalid, and
one without a tag (made before the keys were set) too unless --allow-unsigned. Needs a token with
backups:write.

Exit codes: 0 rebuilt; 1 some manifests were conflicts or invalid (the rest were rebuilt); others from
the errors table.

Flags:
  --from offsite        where the manifests come from (the one source there is)
  -p, --project <slug>  only this project
  --hash <7hex>         only the project with this hash
  --allow-unsigned      accept manifests without an authentication tag`,
  options: { ...PROJECT_OPTIONS, from: { type: 'string' }, 'allow-unsigned': { type: 'boolean' } },
  async run(ctx) {
    const from = str(ctx.values, 'from');
    if (from !== 'offsite') {
      throw new AppError('bad_request', `${this.name}: give --from offsite (the store's manifests)`);
    }
    const client = ctx.client();
    const ref = projectRef(this.name, ctx.values, false);
    const project = ref ? await resolveProject(client, ref) : undefined;
    const { body } = await client.json<RebuildAnswer>('POST', '/api/ops/v1/catalog/rebuild', {
      body: {
        from,
        ...(project ? { projectHash: project.hash } : {}),
        ...(bool(ctx.values, 'allow-unsigned') ? { allowUnsigned: true } : {}),
      },
      long: true,
      signal: ctx.signal,
    });
    const m = body.manifests;
    if (ctx.json) printJson(ctx.io, body);
    else {
      println(
        ctx.io.out,
        `catalog rebuilt from ${body.store}${project ? ` for ${project.slug}` : ''}: ${body.projects} project(s); ` +
          `${m.added} manifest(s) added, ${m.present} already present, ${m.conflicts} conflict(s), ${m.invalid} invalid`,
      );
      for (const warning of body.warnings ?? []) println(ctx.io.err, `flux-ops: warning: ${warning}`);
      const problems = [
        ...body.conflicts.map((c) => ({ ...c, result: 'conflict' })),
        ...body.invalid.map((i) => ({ ...i, result: 'invalid' })),
      ];
      if (problems.length > 0) {
        println(
          ctx.io.out,
          table(problems, [
            { header: 'RESULT', value: (p) => p.result },
            { header: 'PROJECT', value: (p) => p.projectId },
            { header: 'BACKUP', value: (p) => p.backupId },
            { header: 'REASON', value: (p) => p.reason.slice(0, 200) },
          ]),
        );
      }
      if (m.added > 0) {
        println(
          ctx.io.out,
          'the dumps stay offsite: verify and restore them with --source offsite ' +
            '(flux-ops backup verify -p <slug> --latest --source offsite)',
        );
      }
    }
    if (m.conflicts + m.invalid > 0) {
      throw new Failure(
        `${m.conflicts} conflict(s) and ${m.invalid} invalid manifest(s) were not written; the rest was rebuilt`,
        exitCodeFor('artifact_invalid'),
      );
    }
    return 0;
  },
};

export const CATALOG_COMMANDS: readonly Command[] = [rebuild];
