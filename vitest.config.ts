import { execFileSync } from 'node:child_process';
import { defineConfig } from 'vitest/config';

// The server tools (initdb, pg_ctl, postgres) live outside PATH on Debian; tests put the installed
// major's bin dir first, the way an operator's image would have them on PATH.
function pgBinDir(): string | undefined {
  try {
    return execFileSync('pg_config', ['--bindir'], { encoding: 'utf8' }).trim();
  } catch {
    return undefined;
  }
}
const bin = process.env.FLUX_TEST_PG_BIN ?? pgBinDir();

// Integration tests start real Postgres clusters, Docker containers and TLS servers; give them room and
// keep file-level parallelism modest on two cores.
export default defineConfig({
  test: {
    include: [
      'functions/**/*.test.ts',
      'shared/**/*.test.ts',
      'test/**/*.test.ts',
      'cli/**/*.test.ts',
      'bench/**/*.test.ts',
    ],
    testTimeout: 120_000,
    hookTimeout: 120_000,
    maxWorkers: 2,
    env: bin ? { PATH: `${bin}:${process.env.PATH ?? ''}` } : {},
  },
});
