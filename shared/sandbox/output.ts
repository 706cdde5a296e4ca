// What the drivers keep of a command's output for the one ExecResult shape: a bounded stderr tail, a
// shortened argv, and the versions tools print.

export const STDERR_TAIL_BYTES = 256 * 1024;

/** Keeps the last `limit` bytes of a growing text (stderr of a long restore). */
export function createTail(limit = STDERR_TAIL_BYTES) {
  let chunks: Buffer[] = [];
  let size = 0;
  let dropped = false;
  return {
    push(chunk: Buffer) {
      chunks.push(chunk);
      size += chunk.length;
      while (size > limit && chunks.length > 1) {
        size -= chunks.shift()!.length;
        dropped = true;
      }
    },
    text(): string {
      const all = Buffer.concat(chunks);
      const kept = all.length > limit ? all.subarray(all.length - limit) : all;
      chunks = [kept];
      size = kept.length;
      return (dropped || all.length > limit ? '…' : '') + kept.toString('utf8');
    },
  };
}

export function shortCommand(argv: readonly string[]): string {
  const text = argv.join(' ');
  return text.length > 200 ? `${text.slice(0, 200)}…` : text;
}

/** Parses "pg_restore (PostgreSQL) 15.18 (Debian …)" / "15.18 (Debian …)" into a version and major. */
export function parseVersionText(text: string): { version: string; major: number } | undefined {
  const m = /(?:\(PostgreSQL\)\s+)?(\d+)(?:\.(\d+))?/.exec(text.trim());
  if (!m) return undefined;
  return { version: m[2] ? `${m[1]}.${m[2]}` : `${m[1]}`, major: Number(m[1]) };
}
