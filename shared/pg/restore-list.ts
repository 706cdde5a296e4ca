// The restore list (`pg_restore --list`) as data: which entries an archive has, and the same list with
// some entries commented out for `--use-list`. The entries a superuser must handle itself before an
// unprivileged restore (extensions, and the schemas they live in) are taken out of the tenant's hands here.
// pg_restore prints one entry a line, names with newlines flattened (sanitize_line), so a name can never
// pose as another entry.

/** `<dumpId>; <tableoid> <oid> <DESC> <namespace|-> <tag> [owner]`, the form pg_restore --list prints. */
const ENTRY_RE = /^\s*\d+;\s+\d+\s+\d+\s+(.+?)\s*$/;

/** The part of an entry after its ids: e.g. `SCHEMA - t_x_api`, `EXTENSION - pgcrypto`. */
function entryBody(line: string): string | undefined {
  return ENTRY_RE.exec(line)?.[1];
}

/** Extensions the archive creates (`EXTENSION - <name>` entries). */
export function extensionEntries(list: string): string[] {
  const names: string[] = [];
  for (const line of list.split('\n')) {
    const m = /^EXTENSION - (\S+)$/.exec(entryBody(line) ?? '');
    if (m) names.push(m[1]!);
  }
  return names;
}

export interface ExcludedEntries {
  /** Schemas whose CREATE SCHEMA entry is left out (created beforehand). */
  schemas?: readonly string[];
  /** Leave out every extension entry and the comments on extensions (created beforehand as superuser). */
  extensions?: boolean;
}

/** The list with the named entries commented out, and how many of each kind were. */
export function excludeEntries(
  list: string,
  exclude: ExcludedEntries,
): { list: string; excluded: { schemas: Record<string, number>; extensions: number } } {
  const schemas = new Set(exclude.schemas ?? []);
  const excluded = { schemas: Object.fromEntries([...schemas].map((s) => [s, 0])), extensions: 0 };
  const lines = list.split('\n').map((line) => {
    const body = entryBody(line);
    if (body === undefined) return line;
    const schema = /^SCHEMA - (.+?)(?: \S+)?$/.exec(body)?.[1];
    // With --no-owner dumps there is no owner column, so the whole rest is the name.
    const name = body.startsWith('SCHEMA - ') ? body.slice('SCHEMA - '.length) : undefined;
    for (const candidate of [name, schema]) {
      if (candidate !== undefined && schemas.has(candidate)) {
        excluded.schemas[candidate] = (excluded.schemas[candidate] ?? 0) + 1;
        return `;${line}`;
      }
    }
    if (exclude.extensions && (/^EXTENSION - /.test(body) || /^COMMENT - EXTENSION /.test(body))) {
      excluded.extensions += 1;
      return `;${line}`;
    }
    return line;
  });
  return { list: lines.join('\n'), excluded };
}
