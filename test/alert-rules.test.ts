// The example alert rules (deploy/prometheus/flux-ops-alerts.yml) with the real promtool: they parse, their
// unit tests pass (each alert fires on its series and not on the healthy project beside it), a broken rule
// file is refused, and every flux_ series they name is one flux-ops registers.
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createApp as createDumpApp } from '../functions/dump/app.js';
import { restoreMetrics } from '../functions/restore/metrics.js';
import { makeTestEnv, type TestEnv, testRuntime } from './support/runtime.js';

const DIR = path.resolve(import.meta.dirname, '../deploy/prometheus');
const RULES = path.join(DIR, 'flux-ops-alerts.yml');
const UNIT = path.join(DIR, 'flux-ops-alerts.test.yml');

let scratch: string;
let env: TestEnv;

beforeAll(async () => {
  scratch = await mkdtemp(path.join(tmpdir(), 'flux-ops-rules-'));
  env = await makeTestEnv();
});
afterAll(async () => {
  await rm(scratch, { recursive: true, force: true });
  await env?.cleanup();
});

const promtool = (...args: string[]) => execa('promtool', args, { reject: false, timeout: 60_000 });

describe('alert rules', () => {
  it('pass promtool check rules', async () => {
    const r = await promtool('check', 'rules', RULES);
    expect(r.exitCode, `${r.stdout}\n${r.stderr}`).toBe(0);
    expect(r.stdout).toMatch(/SUCCESS: 8 rules found/);
  });

  it('pass their promtool unit tests', async () => {
    const r = await promtool('test', 'rules', UNIT);
    expect(r.exitCode, `${r.stdout}\n${r.stderr}`).toBe(0);
    expect(r.stdout).toContain('SUCCESS');
  });

  it('a broken rule or a wrong expectation is refused (the checks can fail)', async () => {
    const text = await readFile(RULES, 'utf8');
    const broken = path.join(scratch, 'broken.yml');
    await writeFile(broken, text.replace('> flux_backup_max_age_seconds', '> > flux_backup_max_age_seconds'));
    const r = await promtool('check', 'rules', broken);
    expect(r.exitCode).not.toBe(0);
    expect(`${r.stdout}${r.stderr}`).toMatch(/parse error/);
    const rules = path.join(scratch, 'flux-ops-alerts.yml');
    await writeFile(rules, text.replace('for: 15m', 'for: 45m'));
    const unit = path.join(scratch, 'unit.yml');
    await writeFile(unit, await readFile(UNIT, 'utf8'));
    const t = await promtool('test', 'rules', unit);
    expect(t.exitCode).not.toBe(0);
    expect(`${t.stdout}${t.stderr}`).toMatch(/FAILED[\s\S]*FluxBackupTooOld/);
  });

  it('name only series flux-ops registers', async () => {
    const rt = testRuntime('dump', env);
    createDumpApp(rt);
    restoreMetrics(rt.metrics);
    const named = new Set((await readFile(RULES, 'utf8')).match(/\bflux_[a-z_]+/g));
    expect(named.size).toBeGreaterThan(5);
    const missing = [...named].filter((name) => !rt.metrics.getSingleMetric(name));
    expect(missing).toEqual([]);
  });
});
