#!/bin/sh
# Runs a command with the installed PostgreSQL's bin dir first on PATH (Debian keeps initdb and pg_ctl
# outside PATH; the verify local sandbox and the demo need them).
if command -v pg_config >/dev/null 2>&1; then
  PATH="$(pg_config --bindir):$PATH"
  export PATH
fi
exec "$@"
