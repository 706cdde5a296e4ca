// A compose file read as the security audit needs it: each service's environment, env files, mounts and
// published ports, with `<<` merge keys and ${VAR:-default} interpolation as docker compose applies them.
// Env files (dotenv lines) are read here too.
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { parse as parseYaml } from 'yaml';
import { AppError, errnoOf } from '../shared/errors.js';

export interface ComposeMount {
  type: 'bind' | 'volume' | 'tmpfs' | 'other';
  /** A host path (bind, resolved against the compose file's directory) or a volume name. */
  source: string;
  target: string;
}

export interface ComposePort {
  /** The host address it is published on; undefined = every interface. */
  hostIp?: string;
  published?: string;
  target: string;
}

export interface ComposeService {
  name: string;
  environment: Record<string, string>;
  /** env_file entries, resolved against the compose file's directory. */
  envFiles: string[];
  mounts: ComposeMount[];
  ports: ComposePort[];
  networkMode?: string;
}

export interface ComposeModel {
  file: string;
  services: ComposeService[];
}

/** `KEY=value` lines (`export ` allowed, `#` comments, single or double quotes), as compose reads them. */
export function parseEnvFile(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const raw of text.split(/\r?\n/)) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    const m = /^(?:export\s+)?([A-Za-z_][A-Za-z0-9_.-]*)\s*=\s*(.*)$/.exec(line);
    if (!m) continue;
    let value = m[2]!;
    const quote = value[0];
    if ((quote === '"' || quote === "'") && value.endsWith(quote) && value.length >= 2) {
      value = value.slice(1, -1);
      if (quote === '"') value = value.replace(/\\n/g, '\n').replace(/\\(["\\])/g, '$1');
    } else {
      value = value.replace(/\s+#.*$/, '');
    }
    out[m[1]!] = value;
  }
  return out;
}

/** docker compose's interpolation: $VAR, ${VAR}, ${VAR:-default}, ${VAR-default}, $$ for a dollar. */
export function interpolate(text: string, env: NodeJS.ProcessEnv): string {
  return text.replace(
    /\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?)[-?]([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)/g,
    (match, braced: string | undefined, colon: string | undefined, fallback: string | undefined, bare) => {
      if (match === '$$') return '$';
      const name = (braced ?? bare) as string;
      const value = env[name];
      if (fallback !== undefined && (value === undefined || (colon === ':' && value === ''))) return fallback;
      return value ?? '';
    },
  );
}

function interpolateDeep(value: unknown, env: NodeJS.ProcessEnv): unknown {
  if (typeof value === 'string') return interpolate(value, env);
  if (Array.isArray(value)) return value.map((v) => interpolateDeep(v, env));
  if (value && typeof value === 'object')
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, interpolateDeep(v, env)]));
  return value;
}

function environmentOf(value: unknown): Record<string, string> {
  if (Array.isArray(value)) {
    const out: Record<string, string> = {};
    for (const entry of value) {
      const text = String(entry);
      const eq = text.indexOf('=');
      if (eq > 0) out[text.slice(0, eq)] = text.slice(eq + 1);
    }
    return out;
  }
  if (value && typeof value === 'object')
    return Object.fromEntries(
      Object.entries(value).flatMap(([k, v]) => (v === null || v === undefined ? [] : [[k, String(v)]])),
    );
  return {};
}

function isHostPath(source: string): boolean {
  return source.startsWith('/') || source.startsWith('.') || source.startsWith('~');
}

function mountOf(value: unknown, dir: string): ComposeMount | undefined {
  const resolve = (source: string) =>
    isHostPath(source) && !source.startsWith('~') ? path.resolve(dir, source) : source;
  if (typeof value === 'string') {
    // source:target[:mode]; a lone path is an anonymous volume.
    const parts = value.split(':');
    if (parts.length === 1) return { type: 'volume', source: '', target: parts[0]! };
    const source = parts[0]!;
    return { type: isHostPath(source) ? 'bind' : 'volume', source: resolve(source), target: parts[1]! };
  }
  if (value && typeof value === 'object') {
    const v = value as { type?: string; source?: string; target?: string };
    if (!v.target) return undefined;
    const type = v.type === 'bind' || v.type === 'volume' || v.type === 'tmpfs' ? v.type : 'other';
    return { type, source: type === 'bind' ? resolve(v.source ?? '') : (v.source ?? ''), target: v.target };
  }
  return undefined;
}

/** "127.0.0.1:8080:8080", "8080:8080", "8080", "[::1]:80:80", "8080/tcp", or the long syntax. */
function portOf(value: unknown): ComposePort | undefined {
  if (typeof value === 'number') return { target: String(value) };
  if (typeof value === 'string') {
    const text = value.replace(/\/(tcp|udp|sctp)$/, '');
    const v6 = /^\[([^\]]+)\]:(.*)$/.exec(text);
    const rest = v6 ? v6[2]! : text;
    const parts = rest.split(':');
    if (v6) return { hostIp: v6[1]!, published: parts[0], target: parts[1] ?? parts[0]! };
    if (parts.length >= 3) return { hostIp: parts[0]!, published: parts[1], target: parts[2]! };
    if (parts.length === 2) return { published: parts[0], target: parts[1]! };
    // A lone container port is published on an ephemeral port of every interface.
    return { published: '', target: parts[0]! };
  }
  if (value && typeof value === 'object') {
    const v = value as { target?: unknown; published?: unknown; host_ip?: unknown };
    if (v.target === undefined) return undefined;
    return {
      ...(typeof v.host_ip === 'string' && v.host_ip !== '' ? { hostIp: v.host_ip } : {}),
      ...(v.published !== undefined ? { published: String(v.published) } : {}),
      target: String(v.target),
    };
  }
  return undefined;
}

export async function loadCompose(file: string, env: NodeJS.ProcessEnv): Promise<ComposeModel> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (error) {
    throw new AppError(
      errnoOf(error) === 'ENOENT' ? 'not_found' : 'bad_request',
      `--compose ${file} cannot be read (${errnoOf(error) ?? 'error'}): name the compose file of the deployment, or --compose none`,
    );
  }
  let doc: unknown;
  try {
    doc = parseYaml(text, { merge: true, maxAliasCount: 1000 });
  } catch (error) {
    throw new AppError('bad_request', `--compose ${file} is not valid YAML: ${(error as Error).message}`);
  }
  const services = (doc as { services?: Record<string, unknown> } | null)?.services;
  if (!services || typeof services !== 'object') {
    throw new AppError('bad_request', `--compose ${file} has no services: section`);
  }
  const dir = path.dirname(path.resolve(file));
  return {
    file: path.resolve(file),
    services: Object.entries(services).map(([name, raw]) => {
      const s = (interpolateDeep(raw, env) ?? {}) as Record<string, unknown>;
      const envFiles = (Array.isArray(s.env_file) ? s.env_file : s.env_file ? [s.env_file] : []).map((e) =>
        path.resolve(dir, typeof e === 'string' ? e : String((e as { path?: string }).path ?? '')),
      );
      return {
        name,
        environment: environmentOf(s.environment),
        envFiles,
        mounts: (Array.isArray(s.volumes) ? s.volumes : []).flatMap((v) => mountOf(v, dir) ?? []),
        ports: (Array.isArray(s.ports) ? s.ports : []).flatMap((p) => portOf(p) ?? []),
        ...(typeof s.network_mode === 'string' ? { networkMode: s.network_mode } : {}),
      };
    }),
  };
}
