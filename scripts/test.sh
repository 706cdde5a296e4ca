#!/bin/sh
# The whole test suite: prepare what it needs (Docker engine, verify image, system tools), then format
# and lint, typecheck, and run every test against real Postgres, Docker and TLS.
set -eu
cd "$(dirname "$0")/.."
bash scripts/prepare-test-env.sh
npx biome check .
npx tsc --noEmit -p .
exec sh scripts/with-pg-path.sh npx vitest run "$@"
