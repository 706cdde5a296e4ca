// External tools (pg_dump, pg_restore, psql, initdb…): found on PATH *of this process*, with versions.
// A missing tool is an operator-grade error: the image must include it; a restart does not bring it back.
import { constants } from 'node:fs';
import { access, stat } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { AppError } from './errors.js';

export interface ToolInfo {
  name: string;
  path: string;
  version: string;
  major: number;
}

const versionCache = new Map<string, { mtimeMs: number; info: ToolInfo }>();

export async function which(name: string, pathEnv: string | undefined): Promise<string | undefined> {
  for (const dir of (pathEnv ?? '').split(path.delimiter).filter(Boolean)) {
    const candidate = path.join(dir, name);
    try {
      await access(candidate, constants.X_OK);
      if ((await stat(candidate)).isFile()) return candidate;
    } catch {
      // not here
    }
  }
  return undefined;
}

/** Parses "pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)" and "postgres (PostgreSQL) 17.2". */
export function parsePgVersion(text: string): { version: string; major: number } | undefined {
  const m = /\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?/.exec(text) ?? /PostgreSQL\)?\s+(\d+)(?:\.(\d+))?/.exec(text);
  if (!m) return undefined;
  return { version: m[2] ? `${m[1]}.${m[2]}` : `${m[1]}`, major: Number(m[1]) };
}

export function missingToolMessage(name: string, neededMajor?: number): string {
  const pkg = neededMajor ? `postgresql-client-${neededMajor}` : 'postgresql-client';
  return (
    `${name} not found on PATH of this process: install ${pkg}${neededMajor ? ` (PostgreSQL client tools of major ${neededMajor})` : ''} ` +
    'in the image and rebuild it; restarting the old container does not bring the tool back'
  );
}

/** Finds `name` on `pathEnv` and reads its version; throws tool_missing with the fix otherwise. */
export async function requireTool(
  name: string,
  pathEnv: string | undefined,
  neededMajor?: number,
): Promise<ToolInfo> {
  const found = await which(name, pathEnv);
  if (!found)
    throw new AppError('tool_missing', missingToolMessage(name, neededMajor), { details: { tool: name } });
  const mtimeMs = (await stat(found)).mtimeMs;
  const cached = versionCache.get(found);
  if (cached && cached.mtimeMs === mtimeMs) return { ...cached.info, name };
  let output: string;
  try {
    const result = await execa(found, ['--version'], {
      timeout: 10_000,
      env: { PATH: pathEnv ?? '' },
      extendEnv: false,
    });
    output = result.stdout;
  } catch (error) {
    throw new AppError(
      'tool_missing',
      `${name} at ${found} did not run (${(error as Error).message.split('\n')[0]}); ${missingToolMessage(name, neededMajor)}`,
      { cause: error },
    );
  }
  const parsed = parsePgVersion(output);
  if (!parsed)
    throw new AppError(
      'tool_version',
      `${name} at ${found} printed an unrecognised version: ${output.slice(0, 120)}`,
    );
  const info: ToolInfo = { name, path: found, ...parsed };
  versionCache.set(found, { mtimeMs, info });
  return info;
}

/**
 * The first minor of each major whose pg_dump protects itself from a relation swapped for a view or
 * foreign table while it dumps (restrict_nonsystem_relation_kind, CVE-2024-7348; August 2024 releases).
 */
export const RELATION_KIND_PROTECTION: Readonly<Record<number, number>> = {
  12: 20,
  13: 16,
  14: 13,
  15: 8,
  16: 4,
};
const FIRST_PROTECTED_MAJOR = 17;

/** Whether `version` ("15.18") has restrict_nonsystem_relation_kind (client or server alike). */
export function hasRelationKindProtection(version: string): boolean {
  const [major, minor] = version.split('.').map(Number) as [number, number | undefined];
  if (major >= FIRST_PROTECTED_MAJOR) return true;
  const first = RELATION_KIND_PROTECTION[major];
  return first !== undefined && (minor ?? 0) >= first;
}

function protectedRelease(major: number): string {
  const first = RELATION_KIND_PROTECTION[major];
  return first !== undefined ? `${major}.${first}` : `${FIRST_PROTECTED_MAJOR}`;
}

/** Refuses a pg_dump that a tenant could make run its code by swapping a table for a view mid-dump. */
export function requireRelationKindProtection(tool: ToolInfo): void {
  if (hasRelationKindProtection(tool.version)) return;
  throw new AppError(
    'tool_version',
    `${tool.name} ${tool.version} on PATH lacks restrict_nonsystem_relation_kind (CVE-2024-7348: a tenant could swap a table ` +
      `for a view during the dump and run its code as the dumping role): install postgresql-client ${protectedRelease(tool.major)} ` +
      'or newer in the image and rebuild it',
    { details: { tool: tool.name, version: tool.version } },
  );
}

/** A client tool must be at least the server's major to read it (pg_dump refuses newer servers). */
export function requireMajorAtLeast(tool: ToolInfo, serverMajor: number): void {
  if (tool.major < serverMajor) {
    throw new AppError(
      'tool_version',
      `${tool.name} ${tool.version} on PATH is older than the server (major ${serverMajor}): install postgresql-client-${serverMajor} ` +
        `(client tools of major ${serverMajor} or newer) in the image and rebuild it; restarting the old container is not enough`,
      { details: { tool: tool.name, toolMajor: tool.major, serverMajor } },
    );
  }
}
