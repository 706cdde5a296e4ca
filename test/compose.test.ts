// The deployment, proven statically: `docker compose config` (the plugin, or Debian's docker-compose)
// parses compose.yml, and every service, port, variable, event sink and volume in it is checked against the
// config module and the functions themselves; the Dockerfile and the build context are checked the same way.
// No image can be pulled here, so nothing is started.

import { mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FACTORIES } from '../functions/all/app.js';
import {
  type Config,
  FUNCTION_NAMES,
  type FunctionName,
  loadConfig,
  portOf,
  UPSTREAM_VARS,
  VARS,
} from '../shared/config.js';
import { RUN_AS_UID } from '../shared/errors.js';
import { NODE_FLAGS } from '../shared/kit/node-flags.js';
import { ownerLockTargets } from '../shared/kit/owner-lock.js';
import { createRuntime } from '../shared/kit/runtime.js';
import { createLogger } from '../shared/log.js';
import { createRegistry } from '../shared/metrics.js';
import { createStaticRegistry } from '../shared/registry.js';
import { ADMIN, WEBHOOK_SECRET } from './support/runtime.js';

const ROOT = path.resolve(import.meta.dirname, '..');
const CI = process.env.CI === 'true';
const INSTALL_COMPOSE = 'apt-get install -y docker-compose';
const SERVICES = [...FUNCTION_NAMES, 'router', 'volumes-init'];
const DATA_DIR_VARS = [
  'FLUX_BACKUPS_LOCAL_DIR',
  'FLUX_BACKUPS_OFFSITE_DIR',
  'FLUX_STATE_DIR',
  'FLUX_VERIFY_LOCAL_DIR',
] as const;
/** The directories each function writes, beyond FLUX_STATE_DIR which all of them use (outbox, inbox). */
const NEEDS: Record<FunctionName, Array<(typeof DATA_DIR_VARS)[number]>> = {
  dump: ['FLUX_BACKUPS_LOCAL_DIR'],
  replicate: ['FLUX_BACKUPS_LOCAL_DIR', 'FLUX_BACKUPS_OFFSITE_DIR'],
  verify: ['FLUX_BACKUPS_LOCAL_DIR', 'FLUX_BACKUPS_OFFSITE_DIR', 'FLUX_VERIFY_LOCAL_DIR'],
  probe: [],
  migrate: ['FLUX_BACKUPS_LOCAL_DIR'],
  restore: ['FLUX_BACKUPS_LOCAL_DIR', 'FLUX_BACKUPS_OFFSITE_DIR'],
};

/** The CLI's own variables (the upstream flux CLI's names): read by the client, never by a service. */
const CLIENT_VARS = ['FLUX_API_BASE', 'FLUX_API_TOKEN'];

const ENV_FILE = {
  FLUX_API_TOKENS: ADMIN.entry,
  FLUX_WEBHOOK_SECRETS: WEBHOOK_SECRET,
  FLUX_TENANT_PROBE_GATEWAY_URL: 'https://gateway.flux.test',
};

// ---------------------------------------------------------------------------------------------------------
// compose config, normalised across the plugin (JSON) and docker-compose v1 (YAML)

interface Mount {
  type: 'volume' | 'bind';
  source: string;
  target: string;
  readOnly: boolean;
}
interface Port {
  hostIp: string | undefined;
  published: string;
  target: number;
}
interface Service {
  image?: string;
  user?: string;
  environment: Record<string, string>;
  expose: string[];
  ports: Port[];
  mounts: Mount[];
  healthcheck?: { test?: string[] | string; disable?: boolean };
  group_add?: Array<string | number>;
  depends_on?: Record<string, { condition?: string }>;
  command?: string[] | string;
  entrypoint?: string[] | string;
  network_mode?: string;
}
interface Model {
  services: Record<string, Service>;
  volumes: Record<string, unknown>;
}

interface ComposeTool {
  name: string;
  config(file: string, projectDir: string): Promise<unknown>;
}

const toolEnv = { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: tmpdir() };

async function detectCompose(): Promise<ComposeTool | undefined> {
  const plugin = await execa('docker', ['compose', 'version'], {
    reject: false,
    env: toolEnv,
    extendEnv: false,
  });
  if (plugin.exitCode === 0) {
    return {
      name: 'docker compose',
      async config(file, projectDir) {
        const out = await execa(
          'docker',
          ['compose', '-f', file, '--project-directory', projectDir, 'config', '--format', 'json'],
          { env: toolEnv, extendEnv: false },
        );
        return JSON.parse(out.stdout);
      },
    };
  }
  const v1 = await execa('docker-compose', ['version'], { reject: false, env: toolEnv, extendEnv: false });
  if (v1.exitCode === 0) {
    return {
      name: 'docker-compose',
      async config(file, projectDir) {
        const out = await execa('docker-compose', ['-f', file, '--project-directory', projectDir, 'config'], {
          env: toolEnv,
          extendEnv: false,
        });
        // docker-compose v1 prints YAML only; its own dependency python3-yaml turns it into JSON.
        const json = await execa(
          'python3',
          ['-c', 'import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)'],
          { input: out.stdout, env: toolEnv, extendEnv: false },
        );
        return JSON.parse(json.stdout);
      },
    };
  }
  return undefined;
}

function normaliseMount(raw: unknown): Mount {
  if (typeof raw === 'string') {
    const parts = raw.split(':');
    const [source = '', target = '', mode = 'rw'] = parts;
    return {
      type: source.startsWith('/') || source.startsWith('.') ? 'bind' : 'volume',
      source,
      target,
      readOnly: mode.split(',').includes('ro'),
    };
  }
  const m = raw as { type: string; source: string; target: string; read_only?: boolean };
  return {
    type: m.type === 'volume' ? 'volume' : 'bind',
    source: m.source,
    target: m.target,
    readOnly: !!m.read_only,
  };
}

function normalisePort(raw: unknown): Port {
  if (typeof raw === 'string' || typeof raw === 'number') {
    const parts = String(raw)
      .replace(/\/tcp$/, '')
      .split(':');
    const target = Number(parts.pop());
    const published = parts.pop() ?? '';
    return { hostIp: parts.pop(), published, target };
  }
  const p = raw as { host_ip?: string; published?: string | number; target: number };
  return { hostIp: p.host_ip, published: String(p.published ?? ''), target: Number(p.target) };
}

function normalise(raw: unknown): Model {
  const model = raw as {
    services: Record<string, Record<string, unknown>>;
    volumes?: Record<string, unknown>;
  };
  const services: Record<string, Service> = {};
  for (const [name, s] of Object.entries(model.services)) {
    const environment: Record<string, string> = {};
    for (const [k, v] of Object.entries((s.environment as Record<string, unknown>) ?? {})) {
      if (v !== null && v !== undefined) environment[k] = String(v);
    }
    services[name] = {
      ...(s as object),
      environment,
      expose: ((s.expose as unknown[]) ?? []).map(String),
      ports: ((s.ports as unknown[]) ?? []).map(normalisePort),
      mounts: ((s.volumes as unknown[]) ?? []).map(normaliseMount),
    } as Service;
  }
  return { services, volumes: model.volumes ?? {} };
}

// ---------------------------------------------------------------------------------------------------------
// The image's own environment (Dockerfile ENV), which every container starts from

function dockerfileEnv(dockerfile: string): Record<string, string> {
  const env: Record<string, string> = {};
  const joined = dockerfile.replace(/\\\n\s*/g, ' ');
  for (const line of joined.split('\n')) {
    const m = /^ENV\s+(.*)$/.exec(line.trim());
    if (!m) continue;
    for (const pair of m[1]!.split(/\s+/)) {
      const eq = pair.indexOf('=');
      if (eq > 0) env[pair.slice(0, eq)] = pair.slice(eq + 1);
    }
  }
  return env;
}

/** `${NAME}` as the shell and the Dockerfile write it. */
const shellVar = (name: string) => `\${${name}}`;

function flux(names: Iterable<string>): string[] {
  return [...names].filter((n) => n.startsWith('FLUX_'));
}

// ---------------------------------------------------------------------------------------------------------

const composeText = await readFile(path.join(ROOT, 'compose.yml'), 'utf8');
const dockerfile = await readFile(path.join(ROOT, 'Dockerfile'), 'utf8');
const imageEnv = dockerfileEnv(dockerfile);
const compose = await detectCompose();

let projectDir: string;
let model: Model;
const configs = {} as Record<FunctionName | 'router', Config>;

function serviceEnv(name: string): NodeJS.ProcessEnv {
  return { ...imageEnv, ...model.services[name]!.environment };
}

function describeCompose(name: string, fn: () => void): void {
  if (compose) {
    describe(name, fn);
    return;
  }
  if (CI) {
    describe(name, () => {
      it(`needs docker compose in CI (${INSTALL_COMPOSE})`, () => {
        throw new Error(`neither "docker compose" nor "docker-compose" is on PATH: ${INSTALL_COMPOSE}`);
      });
    });
    return;
  }
  console.warn(`skipping "${name}": no docker compose on PATH (${INSTALL_COMPOSE})`);
  describe.skip(name, fn);
}

describeCompose('compose.yml', () => {
  beforeAll(async () => {
    // compose resolves env_file and binds against the project directory: give it one with a test env file.
    projectDir = await mkdtemp(path.join(tmpdir(), 'flux-ops-compose-'));
    await writeFile(
      path.join(projectDir, 'flux-ops.env'),
      Object.entries(ENV_FILE)
        .map(([k, v]) => `${k}=${v}`)
        .join('\n'),
    );
    await writeFile(path.join(projectDir, 'projects.json'), '{"clusters":[],"projects":[]}');
    model = normalise(await compose!.config(path.join(ROOT, 'compose.yml'), projectDir));
    for (const fn of [...FUNCTION_NAMES, 'router'] as const) configs[fn] = loadConfig(serviceEnv(fn));
  });
  afterAll(async () => {
    if (projectDir) await rm(projectDir, { recursive: true, force: true });
  });

  it(`parses, with one service per function plus the router and the volume initialiser (${compose?.name})`, () => {
    expect(Object.keys(model.services).sort()).toEqual([...SERVICES].sort());
    const images = new Set(Object.values(model.services).map((s) => s.image));
    expect([...images]).toEqual(['flux-ops:local']);
  });

  it('names only variables the config module defines', () => {
    const named = new Set([
      ...(composeText.match(/\bFLUX_[A-Z0-9_]+\b/g) ?? []),
      ...(dockerfile.match(/\bFLUX_[A-Z0-9_]+\b/g) ?? []),
    ]);
    const unknown = [...named].filter((n) => !(n in VARS) && !CLIENT_VARS.includes(n));
    expect(unknown).toEqual([]);
    for (const s of Object.values(model.services))
      expect(flux(Object.keys(s.environment)).filter((n) => !(n in VARS))).toEqual([]);
    expect(flux(Object.keys(imageEnv)).filter((n) => !(n in VARS))).toEqual([]);
  });

  it('gives every process a valid config that runs itself, as uid 1001, checked for liveness', () => {
    for (const name of [...FUNCTION_NAMES, 'router'] as const) {
      const s = model.services[name]!;
      expect(configs[name].FLUX_FUNCTION, name).toBe(name);
      expect(s.user, name).toBe(`${RUN_AS_UID}:${RUN_AS_UID}`);
      expect(s.healthcheck?.test, name).toEqual(['CMD', 'node', 'dist/functions/router/healthcheck.js']);
      expect(configs[name].FLUX_HOST).toBe('0.0.0.0');
    }
  });

  it('listens, exposes and is reached on the same port, the one the config module gives each function', () => {
    const router = configs.router;
    for (const fn of FUNCTION_NAMES) {
      const port = portOf(configs[fn], fn);
      expect(model.services[fn]!.expose, fn).toEqual([String(port)]);
      // Only the router publishes a port; the functions are reached through it.
      expect(model.services[fn]!.ports, fn).toEqual([]);
      const upstream = new URL(router[UPSTREAM_VARS[fn]]);
      expect(upstream.hostname, UPSTREAM_VARS[fn]).toBe(fn);
      expect(Number(upstream.port), UPSTREAM_VARS[fn]).toBe(port);
    }
    expect(model.services.router!.ports).toEqual([
      { hostIp: '127.0.0.1', published: String(router.FLUX_PORT), target: portOf(router, 'all') },
    ]);
  });

  it("wires each function's events to the functions that act on them, and only those", async () => {
    const scratch = await mkdtemp(path.join(tmpdir(), 'flux-ops-compose-accepts-'));
    try {
      const accepts = {} as Record<FunctionName, readonly string[]>;
      const emits = {} as Record<FunctionName, Set<string>>;
      for (const fn of FUNCTION_NAMES) {
        // The function itself says what it accepts, built from the config its service gets.
        const config = { ...configs[fn], FLUX_STATE_DIR: scratch, FLUX_BACKUPS_LOCAL_DIR: scratch };
        const rt = createRuntime(fn, config, serviceEnv(fn), {
          log: createLogger(fn, { level: 'silent' }),
          metrics: createRegistry({ defaultMetrics: false }),
          registry: createStaticRegistry({}),
        });
        accepts[fn] = FACTORIES[fn](rt).accepts;
        emits[fn] = await emittedBy(fn);
      }
      for (const from of FUNCTION_NAMES) {
        const sinks = configs[from].FLUX_EVENT_SINKS;
        for (const sink of sinks) {
          const url = new URL(sink.url);
          const to = url.hostname as FunctionName;
          expect(FUNCTION_NAMES, sink.url).toContain(to);
          expect(Number(url.port), sink.url).toBe(portOf(configs[to], to));
          expect(url.pathname).toBe('/events');
          for (const type of sink.types) {
            expect(emits[from], `${from} emits ${type}`).toContain(type);
            expect(accepts[to], `${to} accepts ${type}`).toContain(type);
          }
        }
        // Completeness: whatever this function emits that another acts on is sent there.
        for (const to of FUNCTION_NAMES) {
          for (const type of accepts[to].filter((t) => emits[from].has(t))) {
            const delivered = sinks.some((s) => new URL(s.url).hostname === to && s.types.includes(type));
            expect(delivered, `${from} → ${to} (${type})`).toBe(true);
          }
        }
      }
      // Sanity of the scan itself: the pipeline's main edge is there.
      expect(emits.dump).toContain('flux.backup.created');
      expect(accepts.replicate).toContain('flux.backup.created');
    } finally {
      await rm(scratch, { recursive: true, force: true });
    }
  });

  it('mounts the Docker socket into verify only, where FLUX_DOCKER_SOCKET points', () => {
    const withSocket = Object.entries(model.services)
      .filter(([, s]) => s.mounts.some((m) => /docker\.sock/.test(m.source) || /docker\.sock/.test(m.target)))
      .map(([name]) => name);
    expect(withSocket).toEqual(['verify']);
    const verify = model.services.verify!;
    const socket = verify.mounts.find((m) => m.target.endsWith('docker.sock'))!;
    expect(socket.type).toBe('bind');
    expect(configs.verify.FLUX_DOCKER_SOCKET).toBe(socket.target);
    // uid 1001 reaches the socket through the socket's group.
    expect(verify.group_add?.map(String)).toHaveLength(1);
  });

  it('keeps data on named volumes, mounted where each function looks and owned by uid 1001', () => {
    const init = model.services['volumes-init']!;
    const initTargets = new Map(init.mounts.map((m) => [m.source, m.target]));
    const declared = Object.keys(model.volumes);
    for (const fn of FUNCTION_NAMES) {
      const s = model.services[fn]!;
      const config = configs[fn];
      for (const variable of ['FLUX_STATE_DIR', ...NEEDS[fn]] as const) {
        const dir = config[variable];
        const mount = s.mounts.find((m) => m.target === dir);
        expect(mount, `${fn}: ${variable}=${dir} is mounted`).toBeDefined();
        expect(mount!.type, `${fn}: ${variable}`).toBe('volume');
        expect(declared).toContain(mount!.source);
        // The initialiser chowns the same volume at the same path.
        expect(initTargets.get(mount!.source), `${mount!.source} in volumes-init`).toBe(dir);
        const writes = variable !== 'FLUX_BACKUPS_OFFSITE_DIR' || fn === 'replicate';
        if (writes) expect(mount!.readOnly, `${fn} writes ${variable}`).toBe(false);
      }
      // Nothing else of the data dirs is mounted into a function that does not use it.
      const dataTargets = DATA_DIR_VARS.map((v) => config[v]).filter(Boolean);
      const mountedData = s.mounts.filter((m) => dataTargets.includes(m.target)).map((m) => m.target);
      expect(mountedData.sort(), fn).toEqual(
        ['FLUX_STATE_DIR', ...NEEDS[fn]].map((v) => config[v as keyof Config]).sort(),
      );
      // The owner lock of the backup root is taken exactly where the root is mounted (writable).
      const locksRoot = ownerLockTargets(config, [fn]).some((t) => t.variable === 'FLUX_BACKUPS_LOCAL_DIR');
      expect(locksRoot, `${fn} locks FLUX_BACKUPS_LOCAL_DIR`).toBe(
        NEEDS[fn].includes('FLUX_BACKUPS_LOCAL_DIR'),
      );
      const projects = s.mounts.find((m) => m.target === config.FLUX_PROJECTS_FILE);
      expect(projects?.readOnly, `${fn}: FLUX_PROJECTS_FILE mounted read-only`).toBe(true);
      expect(s.depends_on?.['volumes-init']?.condition).toBe('service_completed_successfully');
    }
    expect(model.services.router!.mounts).toEqual([]);
    expect(init.user).toBe('0:0');
    expect(init.network_mode).toBe('none');
    const command = [init.entrypoint, init.command].flat().join(' ');
    expect(command).toContain(`chown ${RUN_AS_UID}:${RUN_AS_UID}`);
    for (const target of initTargets.values()) expect(command).toContain(target);
    // The image creates the same directories owned by 1001, so a fresh volume starts with that owner.
    const owned = dockerfile.replace(/\\\n\s*/g, ' ').match(/install -d -o 1001 -g 1001 .*/)?.[0] ?? '';
    for (const target of initTargets.values())
      expect(owned, `Dockerfile creates ${target}`).toContain(target);
  });

  it('takes secrets from the env file only: none in compose.yml, none in the router', () => {
    const secrets = Object.entries(VARS)
      .filter(([, spec]) => (spec as { secret?: boolean }).secret)
      .map(([name]) => name);
    expect(secrets).toContain('FLUX_API_TOKENS');
    const code = composeText
      .split('\n')
      .filter((l) => !l.trim().startsWith('#'))
      .join('\n');
    for (const name of secrets) expect(code, name).not.toContain(name);
    for (const fn of FUNCTION_NAMES) {
      expect(model.services[fn]!.environment.FLUX_API_TOKENS, fn).toBe(ENV_FILE.FLUX_API_TOKENS);
      expect(model.services[fn]!.environment.FLUX_WEBHOOK_SECRETS, fn).toBe(ENV_FILE.FLUX_WEBHOOK_SECRETS);
    }
    const routerEnv = model.services.router!.environment;
    expect(secrets.filter((name) => name in routerEnv)).toEqual([]);
  });
});

describe('Dockerfile', () => {
  it('builds a Node LTS (22 or 24) on bookworm-slim pinned by digest, PostgreSQL PG_MAJOR tools first on PATH, production deps, flux-ops on PATH', () => {
    expect(dockerfile).toMatch(/^ARG NODE_IMAGE=node:(22|24)-bookworm-slim@sha256:[0-9a-f]{64}$/m);
    expect(dockerfile).toMatch(
      /^RUN ln -s \/app\/bin\/flux-ops\.mjs \/usr\/local\/bin\/flux-ops && flux-ops --version$/m,
    );
    expect(dockerfile).toMatch(/^ARG PG_MAJOR=17$/m);
    expect(imageEnv.PATH).toMatch(/^\/usr\/lib\/postgresql\/\$\{PG_MAJOR\}\/bin:/);
    expect(dockerfile).toContain(
      `"postgresql-client-${shellVar('PG_MAJOR')}" "postgresql-${shellVar('PG_MAJOR')}"`,
    );
    expect(dockerfile).toContain('create_main_cluster = false');
    expect(dockerfile).toMatch(/npm ci --omit=dev/);
    expect(dockerfile).toMatch(/RUN npm run build/);
    expect(dockerfile).toMatch(/COPY --from=build \/app\/dist \.\/dist/);
    expect(dockerfile).toMatch(/^USER 1001:1001$/m);
    expect(dockerfile).toMatch(/HEALTHCHECK [\s\S]*dist\/functions\/router\/healthcheck\.js/);
  });

  it('sets the production directories the config module defaults to', () => {
    for (const name of [
      'FLUX_STATE_DIR',
      'FLUX_BACKUPS_LOCAL_DIR',
      'FLUX_BACKUPS_OFFSITE_DIR',
      'FLUX_PROJECTS_FILE',
    ] as const) {
      expect(imageEnv[name], name).toBe(loadConfig({})[name]);
    }
    expect(imageEnv.FLUX_VERIFY_LOCAL_DIR).toMatch(/^\/srv\/flux\//);
    expect(imageEnv.FLUX_HOST).toBe('0.0.0.0');
  });

  it('starts every function with Node’s flags, as the package’s start scripts and the benchmarks do', async () => {
    const cmd = JSON.parse(/^CMD (.*)$/m.exec(dockerfile)?.[1] ?? '[]').join(' ') as string;
    const flags = NODE_FLAGS.join(' ');
    expect(cmd).toContain(`exec node ${flags} "dist/functions/`);
    const { scripts } = JSON.parse(await readFile(path.join(ROOT, 'package.json'), 'utf8')) as {
      scripts: Record<string, string>;
    };
    const starts = Object.entries(scripts).filter(([name]) => name === 'start' || name.startsWith('start:'));
    expect(starts.length).toBeGreaterThan(7);
    for (const [name, script] of starts)
      expect(script, name).toMatch(new RegExp(`(tsx|node) ${flags} \\S*functions/`));
    // A flag V8 does not know would stop the process at start: node takes each of them.
    const probe = await execa(process.execPath, [...NODE_FLAGS, '-e', 'process.exit(0)'], { reject: false });
    expect(probe.exitCode, probe.stderr).toBe(0);
  });

  it('starts the process FLUX_FUNCTION names, for every value the config module accepts', async () => {
    const cmd = /^CMD (.*)$/m.exec(dockerfile)?.[1] ?? '';
    const accepted = (VARS.FLUX_FUNCTION.schema.unwrap() as { options: string[] }).options;
    const listed = /case [^|]* in ([a-z|]+)\)/.exec(JSON.parse(cmd).join(' '))?.[1]?.split('|') ?? [];
    expect(listed.sort()).toEqual([...accepted].sort());
    for (const fn of accepted) {
      expect((await stat(path.join(ROOT, 'functions', fn, 'main.ts'))).isFile(), fn).toBe(true);
    }
    expect(cmd).toContain(`dist/functions/${shellVar('FLUX_FUNCTION')}/main.js`);
    // A missing or wrong FLUX_FUNCTION exits with the config exit code and says what to set.
    const script = JSON.parse(cmd) as string[];
    const wrong = await execa(script[0]!, script.slice(1), {
      env: { ...toolEnv, FLUX_FUNCTION: 'dumpp' },
      extendEnv: false,
      reject: false,
    });
    expect(wrong.exitCode).toBe(78);
    expect(wrong.stderr).toMatch(/set FLUX_FUNCTION to dump, replicate/);
  });
});

// ---------------------------------------------------------------------------------------------------------
// The build context, as the Docker engine itself filters it through .dockerignore

const dockerUp =
  (await execa('docker', ['info'], { reject: false, env: toolEnv, extendEnv: false })).exitCode === 0;

const describeDockerBuild = dockerUp ? describe : CI ? describe : describe.skip;
if (!dockerUp && !CI)
  console.warn('skipping the build-context test: no Docker engine (run scripts/prepare-test-env.sh)');

describeDockerBuild('.dockerignore', () => {
  it('sends what the Dockerfile copies and keeps env files, keys, data, tests and node_modules out', async () => {
    if (!dockerUp) throw new Error('no Docker engine answering: run scripts/prepare-test-env.sh');
    const ctx = await mkdtemp(path.join(tmpdir(), 'flux-ops-context-'));
    const tag = `flux-ops-context-test:${path
      .basename(ctx)
      .toLowerCase()
      .replace(/[^a-z0-9]/g, '')}`;
    try {
      const sources = dockerfile
        .split('\n')
        .filter((l) => l.startsWith('COPY ') && !l.includes('--from='))
        .flatMap((l) => l.trim().split(/\s+/).slice(1, -1));
      expect(sources).toEqual(
        expect.arrayContaining(['package.json', 'package-lock.json', 'shared', 'functions']),
      );
      const decoys = [
        'flux-ops.env',
        '.env',
        'deploy/prod.env',
        'tls/server.key',
        'tls/ca.pem',
        '.flux-data/state/outbox.json',
        'node_modules/x/index.js',
        'dist/functions/dump/main.js',
        'test/router.test.ts',
        'functions/dump/retention.test.ts',
        'projects.json',
        'test-artifacts/status-page.png',
      ];
      const wanted = sources.map((s) => (/\.\w+$/.test(s) ? s : `${s}/kept.ts`));
      for (const file of [...wanted, ...decoys, '.dockerignore']) {
        await mkdir(path.join(ctx, path.dirname(file)), { recursive: true });
        await writeFile(path.join(ctx, file), file === '.dockerignore' ? '' : 'x');
      }
      await writeFile(path.join(ctx, '.dockerignore'), await readFile(path.join(ROOT, '.dockerignore')));
      const probeFile = path.join(ctx, '..', `${path.basename(ctx)}.Dockerfile`);
      await writeFile(probeFile, 'FROM scratch\nCOPY . /ctx\n');
      await execa('docker', ['build', '-q', '-f', probeFile, '-t', tag, ctx], {
        env: { ...toolEnv, DOCKER_BUILDKIT: '0' },
        extendEnv: false,
      });
      await rm(probeFile, { force: true });
      const created = await execa('docker', ['create', tag, '/none'], { env: toolEnv, extendEnv: false });
      const id = created.stdout.trim();
      try {
        const listing = await execa('sh', ['-c', `docker export ${id} | tar -t`], {
          env: toolEnv,
          extendEnv: false,
        });
        const files = listing.stdout
          .split('\n')
          .filter((f) => f.startsWith('ctx/') && !f.endsWith('/'))
          .map((f) => f.slice('ctx/'.length));
        for (const file of wanted) expect(files, file).toContain(file);
        for (const file of decoys) expect(files, file).not.toContain(file);
      } finally {
        await execa('docker', ['rm', '-f', id], { env: toolEnv, extendEnv: false, reject: false });
      }
    } finally {
      await execa('docker', ['rmi', '-f', tag], { env: toolEnv, extendEnv: false, reject: false });
      await rm(ctx, { recursive: true, force: true });
    }
  });
});

/**
 * The event types a function's code emits: `emit('flux.…'` in functions/<fn>/ and in the other functions'
 * modules it imports (none should: functions ask each other over HTTP or with events), tests excluded.
 */
async function emittedBy(fn: FunctionName): Promise<Set<string>> {
  const dir = path.join(ROOT, 'functions', fn);
  const queue = (await readdir(dir))
    .filter((f) => f.endsWith('.ts') && !f.endsWith('.test.ts'))
    .map((f) => path.join(dir, f));
  const seen = new Set<string>();
  const types = new Set<string>();
  while (queue.length > 0) {
    const file = queue.pop()!;
    if (seen.has(file)) continue;
    seen.add(file);
    const text = await readFile(file, 'utf8');
    for (const m of text.matchAll(/emit\(\s*'(flux\.[a-z_.]+)'/g)) types.add(m[1]!);
    for (const m of text.matchAll(/from '(\.\.\/[a-z]+\/[a-z-]+)\.js'/g)) {
      queue.push(path.resolve(path.dirname(file), `${m[1]}.ts`));
    }
  }
  return types;
}
