// Preflight checks behind /readyz: each check says what it looked at and, when it fails, what to do.
import { randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import { access, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { errnoOf, isAppError, RUN_AS_UID } from './errors.js';
import type { ProjectRegistry } from './registry.js';
import { requireRelationKindProtection, requireTool } from './tools.js';

export interface CheckResult {
  name: string;
  ok: boolean;
  detail: string;
  /** Optional checks report but never fail readiness. */
  optional?: boolean;
  [key: string]: unknown;
}

export interface CheckOutcome {
  ok: boolean;
  detail: string;
  [key: string]: unknown;
}

export interface ReadyCheck {
  name: string;
  optional?: boolean;
  run(): Promise<CheckOutcome>;
}

/**
 * A finding reported beside the checks that does not make the process unready: a feature that is not in
 * use (probe with no gateway and nothing to probe). Shaped as the registry's warnings are.
 */
export function warningOutcome(
  warning: string,
  detail: string,
  facts: Record<string, unknown> = {},
): CheckOutcome {
  return { ok: false, optional: true, warning, detail, ...facts };
}

export async function runChecks(
  checks: readonly ReadyCheck[],
): Promise<{ ok: boolean; checks: CheckResult[] }> {
  const results = await Promise.all(
    checks.map(async (check): Promise<CheckResult> => {
      try {
        // An outcome may make itself optional (warningOutcome): a check of a feature not in use.
        const r = await check.run();
        return { name: check.name, ...(check.optional ? { optional: true } : {}), ...r };
      } catch (error) {
        return {
          name: check.name,
          ok: false,
          ...(check.optional ? { optional: true } : {}),
          detail: isAppError(error) ? error.message : (error as Error).message,
          ...(isAppError(error) ? { code: error.code } : {}),
        };
      }
    }),
  );
  return { ok: results.every((r) => r.ok || r.optional), checks: results };
}

export function toolCheck(
  tool: string,
  pathEnv: () => string | undefined,
  options: { optional?: boolean } = {},
): ReadyCheck {
  return {
    name: `tool:${tool}`,
    ...(options.optional ? { optional: true } : {}),
    async run() {
      const info = await requireTool(tool, pathEnv());
      // A pg_dump a tenant could turn against us is not ready, whatever its major.
      if (tool === 'pg_dump') requireRelationKindProtection(info);
      return foundTool(info);
    },
  };
}

/** The outcome of a tool check that found the tool: where it is and which version. */
export function foundTool(info: { path: string; version: string; major: number }): CheckOutcome {
  return {
    ok: true,
    detail: `${info.path} (${info.version})`,
    path: info.path,
    version: info.version,
    major: info.major,
  };
}

/** The nearest directory at or above `dir` that exists (the one a first start would create under). */
async function nearestExisting(dir: string): Promise<string> {
  let at = path.resolve(dir);
  for (;;) {
    const s = await stat(at).catch(() => undefined);
    if (s?.isDirectory()) return at;
    const up = path.dirname(at);
    if (up === at) return at;
    at = up;
  }
}

/**
 * Proves a write by this process (as its uid) with a probe file it removes at once. A directory that does
 * not exist yet is not created (readiness, and flux-ops doctor that runs it, only look): the nearest
 * existing parent must be writable, so the function's own start-up can create it.
 */
export function dirWritableCheck(dir: string, variable: string): ReadyCheck {
  return {
    name: `dir:${variable}`,
    async run() {
      let target = dir;
      try {
        const existing = await stat(dir).catch((error: unknown) => {
          if (errnoOf(error) === 'ENOENT') return undefined;
          throw error;
        });
        if (!existing) {
          target = await nearestExisting(dir);
          await access(target, constants.W_OK | constants.X_OK);
          return {
            ok: true,
            detail: `${dir} does not exist yet; it is created at start (${target} is writable)`,
            missing: true,
          };
        }
        const probe = path.join(dir, `.tmp-ready-${randomBytes(4).toString('hex')}`);
        await writeFile(probe, 'ok');
        await rm(probe, { force: true });
        return { ok: true, detail: `${dir} writable`, owner: existing.uid };
      } catch (error) {
        const errno = errnoOf(error);
        let owner: number | undefined;
        try {
          owner = (await stat(target)).uid;
        } catch {
          owner = undefined;
        }
        return {
          ok: false,
          detail:
            `${variable}=${dir} is not writable by this process (uid ${process.getuid?.()}, ${errno ?? (error as Error).message}` +
            `${target !== dir ? ` on ${target}, where it would be created` : ''}` +
            `${owner !== undefined ? `, owner uid ${owner}` : ''}): run \`chown -R ${RUN_AS_UID}:${RUN_AS_UID} ${target}\` ` +
            '(FLUX_BACKUPS_LOCAL_DIR and FLUX_BACKUPS_OFFSITE_DIR must be writable by uid 1001 in the image)',
        };
      }
    },
  };
}

/**
 * The registry as readiness reports it: never a reason to be unready (a restart would not add projects),
 * but an empty or missing registry, or a reload that was refused, is a warning with what to do.
 * `count` and `nouns` say what this function draws from it (projects, tenants with an apiHost).
 */
export function registryCheck(
  registry: ProjectRegistry,
  file: string,
  options: { count?: () => number; nouns?: readonly [string, string]; field?: string } = {},
): ReadyCheck {
  return {
    name: 'registry',
    optional: true,
    async run() {
      const status = registry.status?.();
      const n = options.count ? options.count() : registry.list().length;
      const [one, many] = options.nouns ?? ['project', 'projects'];
      const counted = `${n} ${n === 1 ? one : many}`;
      const facts = {
        [options.field ?? 'projects']: n,
        ...(status ? { loadedAt: status.loadedAt } : {}),
        ...(status?.refused ? { refused: status.refused } : {}),
      };
      if (status?.refused) {
        return {
          ok: false,
          ...facts,
          warning: 'reload_refused',
          detail:
            `${counted} from ${file} as loaded at ${status.loadedAt}; the reload at ${status.refused.at} ` +
            `(${status.refused.reason}) was refused: ${status.refused.error}. Fix the file, then send SIGHUP ` +
            'or wait for the next check of the file',
        };
      }
      if (registry.list().length === 0) {
        return {
          ok: false,
          ...facts,
          warning: status?.missing ? 'registry_missing' : 'registry_empty',
          detail: `${status?.missing ? `${file} does not exist` : `${file} lists no projects`}: there is nothing to back up or probe; write the projects to FLUX_PROJECTS_FILE (it is read again on change and on SIGHUP)`,
        };
      }
      return { ok: true, ...facts, detail: `${counted} from ${file}` };
    },
  };
}
