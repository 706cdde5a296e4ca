# syntax=docker/dockerfile:1
# flux-ops: one image for every function. FLUX_FUNCTION picks the process a container runs
# (dump, replicate, verify, probe, migrate, restore, router, or all for the all-in-one), always as uid 1001.
#
#   docker build -t flux-ops:local .
#   docker build --build-arg PG_MAJOR=18 -t flux-ops:local .    # tenants on a newer server
#
# pg_dump refuses servers newer than itself, so PG_MAJOR follows the newest tenant server; the same
# major's server binaries (initdb, postgres) let verify fall back to a local throwaway cluster when it
# has no Docker engine.

# Node 22 (an LTS line), pinned by digest so a rebuild gets the same base; bump tag and digest together
# (docker buildx imagetools inspect node:22-bookworm-slim). Tests run the code on Node 20 as well.
ARG NODE_IMAGE=node:22-bookworm-slim@sha256:f32b81066cde10a75dbac96646099533316d94bac4150c55da1636e1f0ffdc46

# ---- build: compile the TypeScript (dev dependencies live only in this stage)
FROM ${NODE_IMAGE} AS build
WORKDIR /app
COPY package.json package-lock.json ./
# No install scripts: the slim image has no compiler, and nothing here needs one (TypeScript ships its
# compiler as a per-platform optional dependency).
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY shared ./shared
COPY functions ./functions
COPY cli ./cli
RUN npm run build

# ---- deps: production dependencies only
FROM ${NODE_IMAGE} AS deps
WORKDIR /app
COPY package.json package-lock.json ./
# ssh2's optional native add-ons (via dockerode) are skipped: verify talks to Docker over a unix socket.
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund && npm cache clean --force

# ---- runtime
FROM ${NODE_IMAGE} AS runtime
ARG PG_MAJOR=17

# The PostgreSQL tools of PG_MAJOR come first on PATH, ahead of any wrapper, for every function.
ENV NODE_ENV=production \
    PG_MAJOR=${PG_MAJOR} \
    PATH=/usr/lib/postgresql/${PG_MAJOR}/bin:$PATH \
    FLUX_HOST=0.0.0.0 \
    FLUX_STATE_DIR=/srv/flux/state \
    FLUX_BACKUPS_LOCAL_DIR=/srv/flux/backups \
    FLUX_BACKUPS_OFFSITE_DIR=/srv/flux/backups-offsite \
    FLUX_VERIFY_LOCAL_DIR=/srv/flux/verify-scratch \
    FLUX_PROJECTS_FILE=/etc/flux-ops/projects.json

# PostgreSQL from the PGDG repository (Debian's own stops at 15). postgresql-common ships the repository's
# signing key; no cluster is created at install time (the image runs no server of its own).
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends ca-certificates postgresql-common tini; \
    sed -ri 's/^#?[[:space:]]*create_main_cluster[[:space:]]*=.*/create_main_cluster = false/' \
      /etc/postgresql-common/createcluster.conf; \
    echo "deb [signed-by=/usr/share/postgresql-common/pgdg/apt.postgresql.org.asc] https://apt.postgresql.org/pub/repos/apt bookworm-pgdg main" \
      > /etc/apt/sources.list.d/pgdg.list; \
    apt-get update; \
    apt-get install -y --no-install-recommends "postgresql-client-${PG_MAJOR}" "postgresql-${PG_MAJOR}"; \
    rm -rf /var/lib/apt/lists/*; \
    for tool in pg_dump pg_restore psql initdb postgres; do \
      "$tool" --version | grep -q " ${PG_MAJOR}\." || { echo "$tool is not PostgreSQL ${PG_MAJOR}"; exit 1; }; \
    done

# uid/gid 1001 own the data directories; a fresh named volume mounted on them copies this ownership.
RUN set -eux; \
    groupadd --system --gid 1001 flux; \
    useradd --system --uid 1001 --gid 1001 --home-dir /srv/flux --shell /usr/sbin/nologin flux; \
    install -d -o 1001 -g 1001 -m 0750 /srv/flux /srv/flux/state /srv/flux/backups \
      /srv/flux/backups-offsite /srv/flux/verify-scratch; \
    install -d -m 0755 /etc/flux-ops

WORKDIR /app
COPY --from=deps /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY package.json ./
COPY bin ./bin
# The CLI on PATH: `docker compose exec router flux-ops backup status` (it runs the built dist/).
RUN ln -s /app/bin/flux-ops.mjs /usr/local/bin/flux-ops && flux-ops --version

USER 1001:1001
EXPOSE 8080 8081 8082 8083 8084 8085

HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["node", "dist/functions/router/healthcheck.js"]

# tini is PID 1: it forwards SIGTERM to node (graceful stop) and reaps the tools' orphaned children.
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["sh", "-c", "case \"${FLUX_FUNCTION:-}\" in dump|replicate|verify|probe|migrate|restore|router|all) exec node --max-semi-space-size=4 \"dist/functions/${FLUX_FUNCTION}/main.js\" ;; *) echo \"flux-ops: set FLUX_FUNCTION to dump, replicate, verify, probe, migrate, restore, router or all (got '${FLUX_FUNCTION:-}')\" >&2; exit 78 ;; esac"]
