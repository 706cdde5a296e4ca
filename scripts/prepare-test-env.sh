#!/usr/bin/env bash
# Owns test-environment bootstrap: openssl, promtool, the Docker engine (install + background start) and the local verify image.
set -euo pipefail

# Idempotent; a no-op (well under a second) when everything is already in place.
# Env: FLUX_TEST_VERIFY_IMAGE  verify image tag (default flux-ops/postgres-verify:15)
#      FLUX_TEST_DOCKERD_WAIT  seconds to wait for a freshly started engine (default 30)
#      FLUX_TEST_DOCKERD_STORAGE_DRIVER  storage driver for an engine we start (default vfs)

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
IMAGE=${FLUX_TEST_VERIFY_IMAGE:-flux-ops/postgres-verify:15}
DOCKERD_WAIT=${FLUX_TEST_DOCKERD_WAIT:-30}
STORAGE_DRIVER=${FLUX_TEST_DOCKERD_STORAGE_DRIVER:-vfs} # vfs works everywhere; overlay2 starts containers faster
RECIPE_LABEL=org.flux-ops.verify.recipe

log() { printf 'prepare: %s\n' "$*" >&2; }
is_root() { [[ $(id -u) -eq 0 ]]; }
have() { command -v "$1" >/dev/null 2>&1; }

# apt_install PKG...: install as root; refresh the package lists only if the first attempt fails.
apt_install() {
  if ! is_root; then
    log "missing $*; run: sudo apt-get install -y $*"
    return 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  log "apt-get install -y $*"
  if ! apt-get install -y --no-install-recommends "$@" >/dev/null 2>&1; then
    log "install failed; running apt-get update and retrying"
    apt-get update -q >/dev/null
    apt-get install -y --no-install-recommends "$@" >/dev/null
  fi
}

# Serialise concurrent callers (e.g. two test workers) so only one starts dockerd or builds the image.
if have flock; then
  exec 9>"${TMPDIR:-/tmp}/flux-ops-prepare.$(id -u).lock"
  flock -w 900 9 || { log "timed out waiting for another prepare run"; exit 1; }
fi

have openssl || apt_install openssl || true
# The compose test parses `docker compose config`; the status page test drives Debian's Chromium.
{ docker compose version >/dev/null 2>&1 || have docker-compose; } || apt_install docker-compose || true
[[ -x /usr/bin/chromium ]] || apt_install chromium || true
# The alert rules test runs promtool check/test rules (Debian ships promtool in the prometheus package).
have promtool || apt_install prometheus || true
# age: the offsite-encryption tests decrypt copies with the plain CLI, as an operator would.
have age || apt_install age || true

docker_up() { docker info >/dev/null 2>&1; }

if ! have dockerd; then
  apt_install docker.io || true
fi

if ! have docker; then
  log "no docker CLI; docker tests will report themselves unavailable"
  exit 0
fi

if ! docker_up; then
  if [[ -n ${DOCKER_HOST:-} && ${DOCKER_HOST} != unix:///var/run/docker.sock ]]; then
    log "DOCKER_HOST=$DOCKER_HOST does not answer; not starting a local engine"
    exit 0
  fi
  if ! have dockerd; then
    log "no dockerd; docker tests will report themselves unavailable"
    exit 0
  fi
  if ! is_root; then
    log "Docker engine not running; run: sudo $HERE/prepare-test-env.sh"
    exit 0
  fi
  if pid=$(cat /var/run/docker.pid 2>/dev/null) && kill -0 "$pid" 2>/dev/null; then
    log "dockerd (pid $pid) already starting; waiting"
  else
    DOCKERD_LOG=/var/log/flux-ops-dockerd.log
    [[ -w $(dirname "$DOCKERD_LOG") ]] || DOCKERD_LOG=${TMPDIR:-/tmp}/flux-ops-dockerd.log
    log "starting dockerd (log: $DOCKERD_LOG)"
    # setsid + nohup: the engine outlives this shell and the test run that called it. 9>&- keeps it
    # (and its containerd) from inheriting the lock, which would block every later prepare run.
    nohup setsid dockerd --iptables=false --bridge=none --storage-driver="$STORAGE_DRIVER" \
      >>"$DOCKERD_LOG" 2>&1 </dev/null 9>&- &
  fi
  deadline=$((SECONDS + DOCKERD_WAIT))
  until docker_up; do
    if ((SECONDS >= deadline)); then
      log "Docker engine did not answer within ${DOCKERD_WAIT}s; last log lines:"
      tail -n 20 "${DOCKERD_LOG:-/var/log/flux-ops-dockerd.log}" >&2 2>/dev/null || true
      exit 1
    fi
    sleep 0.5
  done
  log "Docker engine is up"
fi

# Build the verify image when missing, or when an image we built ourselves comes from an older recipe.
# An image under this tag without our label (e.g. supplied by the operator) is left alone.
if docker image inspect "$IMAGE" >/dev/null 2>&1; then
  have_recipe=$(docker image inspect -f "{{with .Config.Labels}}{{index . \"$RECIPE_LABEL\"}}{{end}}" "$IMAGE")
  if [[ -n $have_recipe && $have_recipe != "$(FLUX_TEST_VERIFY_IMAGE=$IMAGE "$HERE/build-verify-image.sh" --recipe)" ]]; then
    log "$IMAGE is out of date; rebuilding"
    FLUX_TEST_VERIFY_IMAGE=$IMAGE "$HERE/build-verify-image.sh"
  fi
else
  log "building $IMAGE"
  FLUX_TEST_VERIFY_IMAGE=$IMAGE "$HERE/build-verify-image.sh"
fi
log "ready (image $IMAGE)"
