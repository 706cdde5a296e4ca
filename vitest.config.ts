import { execFileSync } from 'node:child_process';
import { defineConfig } from 'vitest/config';
import { BaseSequencer, type TestSpecification } from 'vitest/node';

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

const ALL = [
  'functions/**/*.test.ts',
  'shared/**/*.test.ts',
  'test/**/*.test.ts',
  'cli/**/*.test.ts',
  'bench/**/*.test.ts',
];
// Files that create, kill and reap verify containers on the one shared Docker engine: a reaper in one
// file's process sweeps what another file planted, so these run one at a time (beside everything else).
const DOCKER_ENGINE = [
  'test/verify-docker.test.ts',
  'test/verify-sandbox.test.ts',
  'test/faults-kill.test.ts',
  'test/faults-env.test.ts',
  'test/hostile-tenant.test.ts',
];

// Files that wait on purpose (a synchronous call held past Node's 300 s header timeout, a schedule across
// its windows) start first, so their waiting overlaps the rest of the suite instead of ending it: on a fresh
// clone there are no recorded durations for vitest's own order to go by.
const LONG_FIRST = ['test/sync-long.test.ts', 'test/schedule.test.ts'];

class LongFirstSequencer extends BaseSequencer {
  override async sort(files: TestSpecification[]): Promise<TestSpecification[]> {
    const sorted = await super.sort(files);
    const rank = (f: TestSpecification) => {
      const i = LONG_FIRST.findIndex((name) => f.moduleId.endsWith(name));
      return i < 0 ? LONG_FIRST.length : i;
    };
    // Array sort is stable: every other file keeps vitest's order.
    return [...sorted].sort((a, b) => rank(a) - rank(b));
  }
}

// Integration tests start real Postgres clusters, Docker containers and TLS servers; give them room and
// keep file-level parallelism modest on two cores.
export default defineConfig({
  test: {
    testTimeout: 120_000,
    hookTimeout: 120_000,
    maxWorkers: 2,
    sequence: { sequencer: LongFirstSequencer },
    env: bin ? { PATH: `${bin}:${process.env.PATH ?? ''}` } : {},
    projects: [
      { extends: true, test: { name: 'main', include: ALL, exclude: DOCKER_ENGINE } },
      { extends: true, test: { name: 'docker-engine', include: DOCKER_ENGINE, fileParallelism: false } },
    ],
  },
});
