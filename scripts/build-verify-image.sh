#!/usr/bin/env bash
# Owns the local Postgres verify image: assembles a minimal PG15 rootfs from the host's binaries and `docker import`s it (no registry).
set -euo pipefail

# Usage: scripts/build-verify-image.sh            build (or rebuild) $IMAGE
#        scripts/build-verify-image.sh --recipe   print the recipe hash stored in the image label, then exit
# Env:   FLUX_TEST_VERIFY_IMAGE  tag to build (default flux-ops/postgres-verify:15)
#        FLUX_VERIFY_PG_MAJOR    host Postgres major to package (default 15)

IMAGE=${FLUX_TEST_VERIFY_IMAGE:-flux-ops/postgres-verify:15}
PG_MAJOR=${FLUX_VERIFY_PG_MAJOR:-15}
PG_BIN=/usr/lib/postgresql/$PG_MAJOR/bin
PG_LIB=/usr/lib/postgresql/$PG_MAJOR/lib
PG_SHARE=/usr/share/postgresql/$PG_MAJOR
PG_UID=999
RECIPE_LABEL=org.flux-ops.verify.recipe

log() { printf 'build-verify-image: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# The recipe hash changes when this script or the host's Postgres build changes; prepare-test-env.sh
# compares it with the label on the existing image to decide whether a rebuild is due.
recipe() {
  { cat "${BASH_SOURCE[0]}"; "$PG_BIN/postgres" --version; } | sha256sum | cut -c1-16
}

[[ -x $PG_BIN/postgres ]] || die "$PG_BIN/postgres not found (apt-get install -y postgresql-$PG_MAJOR)"
if [[ ${1:-} == --recipe ]]; then recipe; exit 0; fi
command -v docker >/dev/null || die "docker CLI not found"
docker info >/dev/null 2>&1 || die "Docker engine not answering (run scripts/prepare-test-env.sh)"

# busybox supplies /bin/sh and the small utilities the entrypoint needs. Prefer a host copy; else install
# busybox-static (root) or unpack the .deb without installing it (non-root).
find_busybox() {
  local b
  for b in /bin/busybox /usr/bin/busybox "${BUSYBOX_CACHE:-}/bin/busybox"; do
    [[ -x $b ]] && { echo "$b"; return 0; }
  done
  return 1
}
BUSYBOX_CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/flux-ops/busybox
if ! BUSYBOX=$(find_busybox); then
  if [[ $(id -u) -eq 0 ]]; then
    log "installing busybox-static"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends busybox-static >/dev/null 2>&1 ||
      { apt-get update -q >/dev/null && apt-get install -y --no-install-recommends busybox-static >/dev/null; }
  else
    log "fetching busybox-static .deb into $BUSYBOX_CACHE"
    mkdir -p "$BUSYBOX_CACHE"
    (cd "$BUSYBOX_CACHE" && apt-get download busybox-static >/dev/null 2>&1 && dpkg-deb -x busybox-static_*.deb .)
  fi
  BUSYBOX=$(find_busybox) || die "busybox still not available"
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/flux-verify-image.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
ROOT=$WORK/rootfs
mkdir -p "$ROOT"

# Mirror the host's merged-/usr layout (/lib -> usr/lib ...) so ldd's paths resolve the same way inside.
for d in bin sbin lib lib64; do
  if [[ -L /$d ]]; then
    mkdir -p "$ROOT/$(readlink -f "/$d")"
    ln -s "$(readlink "/$d")" "$ROOT/$d"
  else
    mkdir -p "$ROOT/$d"
  fi
done

# copy_in PATH: copy a host file (and every symlink hop to its final target) to the same path in ROOT.
copy_in() {
  local p=$1 t
  while :; do
    if [[ ! -e $ROOT$p && ! -L $ROOT$p ]]; then
      (cd / && cp -a --parents "${p#/}" "$ROOT") # from / : cp --parents mis-resolves absolute parents
    fi
    [[ -L $p ]] || break
    t=$(readlink "$p")
    [[ $t == /* ]] || t=$(dirname "$p")/$t
    p=$t
  done
}

# copy_with_libs FILE...: copy ELF files plus every shared library (and the loader) ldd reports.
copy_with_libs() {
  local f out lib
  for f in "$@"; do
    copy_in "$f"
    if out=$(ldd "$f" 2>/dev/null); then
      if grep -q 'not found' <<<"$out"; then die "ldd $f: $(grep 'not found' <<<"$out" | head -1)"; fi
      while read -r lib; do copy_in "$lib"; done < <(grep -o '/[^ ]*' <<<"$out")
    fi
  done
}

log "collecting Postgres $PG_MAJOR from host into $ROOT"
copy_with_libs "$PG_BIN"/*
mkdir -p "$ROOT$PG_LIB"
# JIT is left out on purpose: llvmjit.so pulls in ~100 MB of LLVM, and the vfs storage driver copies the
# whole image for every container. Without llvmjit.so the server silently runs with JIT unavailable.
(cd "$PG_LIB" && tar --exclude='./llvmjit*' --exclude='./bitcode' -cf - .) | tar -C "$ROOT$PG_LIB" -xf -
while read -r so; do copy_with_libs "$so"; done < <(find "$ROOT$PG_LIB" -name '*.so' -printf "$PG_LIB/%P\n")
copy_in "$PG_SHARE"
[[ -d /usr/share/zoneinfo ]] && copy_in /usr/share/zoneinfo # Debian builds with --with-system-tzdata
# glibc pieces loaded at run time rather than linked: NSS (user lookup), libgcc_s (unwinding), C.UTF-8.
for f in /lib/x86_64-linux-gnu/libnss_files.so.2 /lib/x86_64-linux-gnu/libgcc_s.so.1 /usr/lib/locale/C.utf8; do
  [[ -e $f ]] && copy_in "$f"
done
# `locale -a` lets initdb import the C.utf8 collation (as in the official image) instead of warning.
[[ -x /usr/bin/locale ]] && copy_with_libs /usr/bin/locale
copy_with_libs /usr/bin/setpriv # util-linux: drops root -> postgres in the entrypoint (busybox has no --reuid)

# Official-image behaviour: new clusters listen on all interfaces.
sed -ri "s!^#?(listen_addresses)\s*=\s*\S+.*!\1 = '*'!" "$ROOT$PG_SHARE/postgresql.conf.sample"
grep -q "^listen_addresses = '\*'" "$ROOT$PG_SHARE/postgresql.conf.sample" || die "could not patch postgresql.conf.sample"

log "adding busybox ($BUSYBOX) and base filesystem"
cp "$BUSYBOX" "$ROOT/usr/bin/busybox"
while read -r applet; do
  [[ -e $ROOT/usr/bin/$applet ]] || ln -s busybox "$ROOT/usr/bin/$applet"
done < <("$BUSYBOX" --list)
[[ -e $ROOT/usr/bin/sh ]] || die "busybox has no sh applet"

mkdir -p "$ROOT"/{etc,root,tmp,run/postgresql,var/lib/postgresql/data,docker-entrypoint-initdb.d,usr/local/bin,proc,sys,dev}
ln -s ../run "$ROOT/var/run"
chmod 1777 "$ROOT/tmp"
chmod 3777 "$ROOT/run/postgresql"
chmod 0700 "$ROOT/var/lib/postgresql/data" "$ROOT/root"
cat >"$ROOT/etc/passwd" <<EOF
root:x:0:0:root:/root:/bin/sh
postgres:x:$PG_UID:$PG_UID:PostgreSQL administrator:/var/lib/postgresql:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
EOF
cat >"$ROOT/etc/group" <<EOF
root:x:0:
postgres:x:$PG_UID:
nogroup:x:65534:
EOF
printf 'passwd: files\ngroup: files\nshadow: files\nhosts: files\n' >"$ROOT/etc/nsswitch.conf"
: >"$ROOT/etc/hosts"
: >"$ROOT/etc/resolv.conf"

cat >"$ROOT/usr/local/bin/docker-entrypoint.sh" <<'ENTRYPOINT'
#!/bin/sh
# Owns container start-up for the flux-ops verify image, modelled on the official postgres image's entrypoint.
set -eu

log() { echo "docker-entrypoint: $*" >&2; }
: "${PGDATA:=/var/lib/postgresql/data}"
export PGDATA

# file_env VAR [DEFAULT]: VAR or the contents of VAR_FILE, like the official image.
file_env() {
  _var=$1 _def=${2:-}
  eval "_val=\${$_var:-}; _file=\${${_var}_FILE:-}"
  if [ -n "$_val" ] && [ -n "$_file" ]; then log "both $_var and ${_var}_FILE are set (but are exclusive)"; exit 1; fi
  if [ -n "$_file" ]; then _val=$(cat "$_file"); fi
  [ -n "$_val" ] || _val=$_def
  export "$_var=$_val"
  unset "${_var}_FILE" || :
}

want_help() {
  for a in "$@"; do
    case "$a" in -'?'|--help|--describe-config|-V|--version) return 0 ;; esac
  done
  return 1
}

# `docker run IMAGE -c foo=bar` means `postgres -c foo=bar`.
if [ "${1#-}" != "${1:-}" ]; then set -- postgres "$@"; fi

if [ "${1:-}" = postgres ] && ! want_help "$@"; then
  if [ "$(id -u)" = 0 ]; then
    mkdir -p "$PGDATA" /var/run/postgresql
    find "$PGDATA" \! -user postgres -exec chown postgres:postgres '{}' +
    chmod 700 "$PGDATA" || :
    chown postgres:postgres /var/run/postgresql
    chmod 3777 /var/run/postgresql || :
    exec /usr/bin/setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
  fi

  if [ ! -s "$PGDATA/PG_VERSION" ]; then
    file_env POSTGRES_PASSWORD
    file_env POSTGRES_USER postgres
    file_env POSTGRES_DB "$POSTGRES_USER"
    file_env POSTGRES_INITDB_ARGS
    : "${POSTGRES_HOST_AUTH_METHOD:=}"
    if [ -z "$POSTGRES_PASSWORD" ] && [ "$POSTGRES_HOST_AUTH_METHOD" != trust ]; then
      cat >&2 <<'EOE'
Error: Database is uninitialized and superuser password is not specified.
       You must specify POSTGRES_PASSWORD to a non-empty value for the
       superuser. For example, "-e POSTGRES_PASSWORD=password" on "docker run".

       You may also use "POSTGRES_HOST_AUTH_METHOD=trust" to allow all
       connections without a password. This is *not* recommended.
EOE
      exit 1
    fi
    [ -n "$POSTGRES_HOST_AUTH_METHOD" ] || POSTGRES_HOST_AUTH_METHOD=scram-sha-256

    mkdir -p "$PGDATA" && chmod 700 "$PGDATA"
    pwfile=
    if [ -n "$POSTGRES_PASSWORD" ]; then
      pwfile=$(mktemp /tmp/pwfile.XXXXXX)
      printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
    fi
    # Unlike the official image, skip initdb's final fsync by default: verify containers are disposable
    # and it costs ~0.5-1 s of start-up. FLUX_VERIFY_INITDB_SYNC=1 restores it.
    nosync=--no-sync
    [ "${FLUX_VERIFY_INITDB_SYNC:-}" != 1 ] || nosync=
    # shellcheck disable=SC2086 # POSTGRES_INITDB_ARGS is word-split on purpose, as in the official image
    initdb --username="$POSTGRES_USER" ${pwfile:+--pwfile="$pwfile"} $nosync $POSTGRES_INITDB_ARGS
    [ -z "$pwfile" ] || rm -f "$pwfile"
    {
      echo
      [ "$POSTGRES_HOST_AUTH_METHOD" != trust ] || echo '# warning trust is enabled for all connections'
      printf 'host all all all %s\n' "$POSTGRES_HOST_AUTH_METHOD"
    } >>"$PGDATA/pg_hba.conf"

    # A temporary server is only needed to create POSTGRES_DB or run init scripts. It listens on a private
    # socket directory (not /var/run/postgresql), so `docker exec ... psql` readiness probes cannot
    # mistake it for the real server.
    has_init=
    for f in /docker-entrypoint-initdb.d/*; do [ -e "$f" ] && has_init=1 && break; done
    if [ -n "$has_init" ] || [ "$POSTGRES_DB" != postgres ]; then
      sockdir=$(mktemp -d /tmp/pg-init-socket.XXXXXX)
      export PGHOST="$sockdir" PGPORT=5432 PGUSER="$POSTGRES_USER" PGPASSWORD="$POSTGRES_PASSWORD"
      pg_ctl -D "$PGDATA" -w -o "-c listen_addresses='' -c unix_socket_directories='$sockdir' -p 5432" start >/dev/null
      psql_init() { psql -v ON_ERROR_STOP=1 --no-psqlrc --no-password "$@"; }
      if [ "$POSTGRES_DB" != postgres ]; then
        psql_init --dbname postgres --set db="$POSTGRES_DB" <<'EOSQL'
CREATE DATABASE :"db" ;
EOSQL
      fi
      for f in /docker-entrypoint-initdb.d/*; do
        [ -e "$f" ] || continue
        case "$f" in
          # shellcheck disable=SC1090
          *.sh) if [ -x "$f" ]; then log "running $f"; "$f"; else log "sourcing $f"; . "$f"; fi ;;
          *.sql) log "running $f"; psql_init --dbname "$POSTGRES_DB" -f "$f" ;;
          *.sql.gz) log "running $f"; gunzip -c "$f" | psql_init --dbname "$POSTGRES_DB" ;;
          *.sql.xz) log "running $f"; xzcat "$f" | psql_init --dbname "$POSTGRES_DB" ;;
          *) log "ignoring $f" ;;
        esac
      done
      pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
      rm -rf "$sockdir"
      unset PGHOST PGPORT PGUSER PGPASSWORD
    fi
    log "PostgreSQL init process complete; ready for start up."
  else
    log "PostgreSQL Database directory appears to contain a database; Skipping initialization"
  fi
fi

exec "$@"
ENTRYPOINT
chmod 755 "$ROOT/usr/local/bin/docker-entrypoint.sh"

# Everything is root-owned except the postgres home/data and socket directories, which get uid 999. Ownership
# is set in the tar headers, so building does not need root.
TAR=$WORK/rootfs.tar
PG_OWNED=(./var/lib/postgresql ./run/postgresql)
tar -C "$ROOT" --numeric-owner --owner=0 --group=0 --anchored \
  --exclude=./var/lib/postgresql --exclude=./run/postgresql -cf "$TAR" .
tar -C "$ROOT" --numeric-owner --owner=$PG_UID --group=$PG_UID -rf "$TAR" "${PG_OWNED[@]}"
log "rootfs: $(du -sh "$ROOT" | cut -f1); importing as $IMAGE"

PG_VERSION=$("$PG_BIN/postgres" --version | awk '{print $3}')
IMPORT_CHANGES=(
  --change 'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]'
  --change 'CMD ["postgres"]'
  --change "ENV PATH=$PG_BIN:/usr/local/bin:/usr/bin:/bin"
  --change 'ENV PGDATA=/var/lib/postgresql/data'
  --change 'ENV LANG=C.UTF-8'
  --change "ENV PG_MAJOR=$PG_MAJOR"
  --change "ENV PG_VERSION=$PG_VERSION"
  --change 'EXPOSE 5432'
  --change 'WORKDIR /'
  --change "LABEL org.opencontainers.image.title=flux-ops-postgres-verify org.opencontainers.image.description=\"Minimal Postgres $PG_MAJOR assembled from host binaries for flux-ops restore verification\" org.opencontainers.image.version=$PG_VERSION $RECIPE_LABEL=$(recipe)"
)
OLD_ID=$(docker image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null || true)
# STOPSIGNAL SIGINT (fast shutdown, as in the official image) is only accepted by newer engines' import;
# Debian 12's docker.io (20.10) rejects it, so fall back to the default SIGTERM (smart shutdown).
if ! out=$(docker import --message "flux-ops verify image (host Postgres $PG_VERSION)" \
  "${IMPORT_CHANGES[@]}" --change 'STOPSIGNAL SIGINT' "$TAR" "$IMAGE" 2>&1); then
  grep -qi stopsignal <<<"$out" || die "docker import failed: $out"
  log "engine does not accept STOPSIGNAL on import; image keeps the default SIGTERM"
  docker import --message "flux-ops verify image (host Postgres $PG_VERSION)" \
    "${IMPORT_CHANGES[@]}" "$TAR" "$IMAGE" >/dev/null
fi

# Smoke test: every packaged tool must at least load its libraries.
docker run --rm --network none --entrypoint /bin/sh "$IMAGE" -c \
  'postgres --version && initdb --version && pg_restore --version && psql --version && pg_amcheck --version' >/dev/null ||
  die "smoke test of $IMAGE failed"
# Drop the image this build replaced (if nothing else uses it), so rebuilds do not pile up under vfs.
NEW_ID=$(docker image inspect -f '{{.Id}}' "$IMAGE")
if [[ -n $OLD_ID && $OLD_ID != "$NEW_ID" ]]; then docker image rm "$OLD_ID" >/dev/null 2>&1 || true; fi
log "built $IMAGE ($(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}'))"
