// Flag parsing (node:util parseArgs, strict) and the validation every command shares: -p/--hash,
// --id/--latest, the API endpoint flags. A usage problem is an AppError `bad_request` (exit 64).
import { readFileSync } from 'node:fs';
import { type ParseArgsConfig, parseArgs } from 'node:util';
import { isBackupId, isProjectHash, isSlug } from '../shared/catalog/ids.js';
import { AppError, errnoOf } from '../shared/errors.js';

export type Options = NonNullable<ParseArgsConfig['options']>;
export type Values = Record<string, string | boolean | string[] | boolean[] | undefined>;

/** Flags every command takes. */
export const COMMON_OPTIONS = {
  json: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
  'api-base': { type: 'string' },
  'token-file': { type: 'string' },
} as const satisfies Options;

export const COMMON_HELP = `Common flags:
  --json               machine-readable JSON on stdout (no progress output)
  --api-base <url>     the flux-ops front door (default: $FLUX_API_BASE, else http://127.0.0.1:8080)
  --token-file <path>  read the Bearer token from a file ('-' for stdin) instead of $FLUX_API_TOKEN
  -h, --help           this help`;

export const PROJECT_OPTIONS = {
  project: { type: 'string', short: 'p' },
  hash: { type: 'string' },
} as const satisfies Options;

export const BACKUP_OPTIONS = {
  id: { type: 'string' },
  latest: { type: 'boolean' },
} as const satisfies Options;

export interface Parsed {
  values: Values;
  positionals: string[];
}

/** Strict parse: unknown flags, missing values and stray arguments are usage errors naming the command. */
export function parse(command: string, argv: readonly string[], options: Options, positionals = 0): Parsed {
  let parsed: { values: Values; positionals: string[] };
  try {
    parsed = parseArgs({
      args: [...argv],
      options: { ...COMMON_OPTIONS, ...options },
      strict: true,
      allowPositionals: positionals > 0,
    }) as { values: Values; positionals: string[] };
  } catch (error) {
    const message = (error as Error).message.replace(/\. To specify a positional argument.*$/s, '');
    throw new AppError('bad_request', `${command}: ${message} (see flux-ops ${command} --help)`);
  }
  if (parsed.positionals.length > positionals) {
    throw new AppError(
      'bad_request',
      `${command}: unexpected argument ${JSON.stringify(parsed.positionals[positionals])} (see flux-ops ${command} --help)`,
    );
  }
  return parsed;
}

export function str(values: Values, name: string): string | undefined {
  const v = values[name];
  return typeof v === 'string' ? v : undefined;
}

export function bool(values: Values, name: string): boolean {
  return values[name] === true;
}

export function strs(values: Values, name: string): string[] {
  const v = values[name];
  if (Array.isArray(v)) return v.filter((x): x is string => typeof x === 'string');
  return typeof v === 'string' ? [v] : [];
}

export interface ProjectRef {
  slug?: string;
  hash?: string;
}

/** -p/--project and --hash; `required` demands at least one of them. */
export function projectRef(command: string, values: Values, required: boolean): ProjectRef | undefined {
  const slug = str(values, 'project');
  const hash = str(values, 'hash');
  if (slug !== undefined && !isSlug(slug)) {
    throw new AppError(
      'bad_request',
      `${command}: -p/--project ${JSON.stringify(slug)} is not a project slug`,
    );
  }
  if (hash !== undefined && !isProjectHash(hash)) {
    throw new AppError(
      'bad_request',
      `${command}: --hash ${JSON.stringify(hash)} is not a project hash (7 lowercase hex characters)`,
    );
  }
  if (slug === undefined && hash === undefined) {
    if (required) {
      throw new AppError('bad_request', `${command}: name the project with -p <slug> (or --hash <7hex>)`);
    }
    return undefined;
  }
  return { ...(slug !== undefined ? { slug } : {}), ...(hash !== undefined ? { hash } : {}) };
}

export type BackupRef = { id: string } | { latest: true };

/** --id <backupId> or --latest, exactly one. */
export function backupRef(command: string, values: Values): BackupRef {
  const id = str(values, 'id');
  const latest = bool(values, 'latest');
  if (id !== undefined && latest) {
    throw new AppError('bad_request', `${command}: give --id <backupId> or --latest, not both`);
  }
  if (id !== undefined) {
    if (!isBackupId(id)) {
      throw new AppError(
        'bad_request',
        `${command}: --id ${JSON.stringify(id.slice(0, 64))} is not a backup id (a ULID or lowercase UUID)`,
      );
    }
    return { id };
  }
  if (latest) return { latest: true };
  throw new AppError('bad_request', `${command}: choose the backup with --id <backupId> or --latest`);
}

/** The token from --token-file (trimmed), never from argv itself: argv is visible to every user. */
export function readTokenFile(file: string | undefined, readStdin: () => string): string | undefined {
  if (file === undefined) return undefined;
  let text: string;
  try {
    text = file === '-' ? readStdin() : readFileSync(file, 'utf8');
  } catch (error) {
    throw new AppError('bad_request', `--token-file ${file}: cannot read it (${errnoOf(error) ?? 'error'})`);
  }
  const token = text.trim();
  if (!token) throw new AppError('bad_request', `--token-file ${file} is empty`);
  return token;
}
