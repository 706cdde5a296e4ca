// npm run demo: a throwaway source Postgres with a v2 tenant schema and a v1 project database, the real
// all-in-one process (npm start) on embedded defaults, and create -> replicate -> verify driven through
// the HTTP API and events. Prints each backup with its three trust labels and tier.
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import path from 'node:path';
import { execa } from 'execa';
import { seedProjectDb, seedTenant } from '../test/support/fixtures.js';
import { startPostgres } from '../test/support/pg.js';

const dataDir = path.resolve('.flux-data');
const say = (line: string) => process.stdout.write(`${line}\n`);

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as { port: number }).port;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

interface Backup {
  id: string;
  status: string;
  artifactValidationStatus: string;
  offsiteStatus: string;
  restoreVerificationOutcome: string;
  restoreVerificationError: string | null;
}

async function main(): Promise<number> {
  say('demo: starting a throwaway source Postgres');
  const pg = await startPostgres();
  const child: { kill?: () => void } = {};
  try {
    await pg.createDatabase('flux_shared');
    const tenant = { id: randomUUID(), slug: 'bloom-atelier' };
    const v1 = { id: randomUUID(), slug: 'ledger-v1' };
    const seeded = await seedTenant(pg, { db: 'flux_shared', projectId: tenant.id, rows: 5000 });
    await seedProjectDb(pg, { db: 'ledger_v1', rows: 2000 });
    say(`demo: seeded tenant schema ${seeded.schema} and database ledger_v1`);

    const hashOf = (id: string) => id.replaceAll('-', '').slice(0, 7);
    await mkdir(dataDir, { recursive: true });
    const projectsFile = path.join(dataDir, 'demo-projects.json');
    await writeFile(
      projectsFile,
      JSON.stringify(
        {
          clusters: [{ name: 'shared-1', url: 'env:FLUX_DEMO_SHARED_URL', maxConcurrentDumps: 2 }],
          projects: [
            {
              id: tenant.id,
              hash: hashOf(tenant.id),
              slug: tenant.slug,
              engine: 'v2_shared',
              cluster: 'shared-1',
              apiHost: `api--${tenant.slug}--${hashOf(tenant.id)}.flux.localhost`,
            },
            {
              id: v1.id,
              hash: hashOf(v1.id),
              slug: v1.slug,
              engine: 'v1_dedicated',
              databaseUrl: 'env:FLUX_DEMO_V1_URL',
              apiHost: `api--${v1.slug}--${hashOf(v1.id)}.flux.localhost`,
            },
          ],
        },
        null,
        2,
      ),
    );

    const token = `fxo_${randomBytes(24).toString('hex')}`;
    const port = Number(process.env.FLUX_PORT) || (await freePort());
    const base = `http://127.0.0.1:${port}`;
    say(`demo: starting flux-ops (all six functions, one process) on ${base}`);
    const server = execa(process.execPath, ['--import', 'tsx', 'functions/all/main.ts'], {
      env: {
        ...process.env,
        FLUX_PORT: String(port),
        FLUX_PROJECTS_FILE: projectsFile,
        FLUX_API_TOKENS: `demo:${createHash('sha256').update(token).digest('hex')}:admin`,
        FLUX_DEMO_SHARED_URL: pg.url('flux_shared'),
        FLUX_DEMO_V1_URL: pg.url('ledger_v1'),
        FLUX_VERIFY_DRIVER: process.env.FLUX_VERIFY_DRIVER ?? 'local',
        FLUX_PROBE_INTERVAL_MS: '0',
        FLUX_LOG_LEVEL: process.env.FLUX_LOG_LEVEL ?? 'warn',
      },
      stdout: 'inherit',
      stderr: 'inherit',
      reject: false,
    });
    child.kill = () => server.kill('SIGTERM');
    const auth = { authorization: `Bearer ${token}` };
    const deadline = Date.now() + 60_000;
    for (;;) {
      const up = await fetch(`${base}/healthz`)
        .then((r) => r.ok)
        .catch(() => false);
      if (up) break;
      if (Date.now() > deadline || server.exitCode !== null)
        throw new Error('flux-ops did not start; see its output above');
      await new Promise((r) => setTimeout(r, 200));
    }

    const created: Array<{ slug: string; hash: string; id: string }> = [];
    for (const p of [tenant, v1]) {
      const res = await fetch(`${base}/api/cli/v1/projects/${hashOf(p.id)}/backups`, {
        method: 'POST',
        headers: auth,
      });
      const body = (await res.json()) as { backup?: { id: string; sizeBytes: number }; error?: string };
      if (!res.ok || !body.backup) throw new Error(`create for ${p.slug} failed: ${body.error}`);
      say(
        `demo: ${p.slug}: backup ${body.backup.id} created (${body.backup.sizeBytes} bytes); replicate and verify follow by events`,
      );
      created.push({ slug: p.slug, hash: hashOf(p.id), id: body.backup.id });
    }

    // Replicate reacts to the manifest's arrival, verify to the signed flux.backup.created event.
    const finalOf = async (c: (typeof created)[number]) => {
      const until = Date.now() + 180_000;
      for (;;) {
        const r = await fetch(`${base}/api/cli/v1/projects/${c.hash}/backups/${c.id}`, { headers: auth });
        const b = ((await r.json()) as { backup: Backup }).backup;
        const settled = b.offsiteStatus !== 'pending' && b.restoreVerificationOutcome !== 'pending';
        if (settled || Date.now() > until) return b;
        await new Promise((res) => setTimeout(res, 300));
      }
    };
    const rows: string[][] = [
      ['project', 'backup', 'artifact validated', 'offsite replicated', 'restore-verified', 'tier'],
    ];
    let allGood = true;
    for (const c of created) {
      const b = await finalOf(c);
      const trust = (await (await fetch(`${base}/api/ops/v1/status`, { headers: auth })).json()) as {
        projects: Array<{ slug: string; tier: string; message: string }>;
      };
      const tier = trust.projects.find((p) => p.slug === c.slug)?.tier ?? 'unknown';
      const yes = (v: boolean) => (v ? 'yes' : 'no');
      rows.push([
        c.slug,
        c.id,
        yes(b.artifactValidationStatus === 'artifact_valid'),
        yes(b.offsiteStatus === 'complete'),
        yes(b.restoreVerificationOutcome === 'restore_verified'),
        tier,
      ]);
      if (tier !== 'restorable' || b.offsiteStatus !== 'complete') {
        allGood = false;
        if (b.restoreVerificationError) say(`demo: ${c.slug}: ${b.restoreVerificationError}`);
      }
    }
    const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
    say('');
    for (const r of rows) say(r.map((cell, i) => cell.padEnd(widths[i]!)).join('  '));
    say('');
    say(
      allGood
        ? 'demo: every backup is restorable and replicated offsite'
        : 'demo: some backups are not restorable; see above',
    );
    const shown = path.relative(process.cwd(), dataDir) || '.';
    const projects = path.relative(process.cwd(), projectsFile);
    say(
      `demo: done, and cleaned up: this flux-ops process and the throwaway source Postgres are stopped. ` +
        `What they made stays under ${shown}/ (backups, backups-offsite, state; the projects in ${projects}).`,
    );
    say(
      'demo: to look at it, serve that catalog again (the source databases are gone, the backups are not):',
    );
    say(`  FLUX_PROJECTS_FILE=${projects} npm start`);
    say(
      '  then in another shell paste the export FLUX_API_TOKEN=... line it prints, and run npx flux-ops backup status ' +
        '(or open http://127.0.0.1:8080/status and paste the token there)',
    );
    return allGood ? 0 : 1;
  } finally {
    child.kill?.();
    await pg.destroy();
  }
}

main().then(
  (code) => process.exit(code),
  (error: unknown) => {
    process.stderr.write(`demo: ${(error as Error).message}\n`);
    process.exit(1);
  },
);
