import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { parseSchedule } from '../../shared/schedule.js';
import { decide, offsetFraction, type ProjectView, slotAt } from './due.js';

const HOUR = 3_600_000;
const DAY = 24 * HOUR;
const daily = parseSchedule('24h');
const now = Date.parse('2026-11-26T12:00:00Z');
const ids = Array.from({ length: 1000 }, () => randomUUID());

function view(projectId: string, extra: Partial<ProjectView> = {}): ProjectView {
  return {
    projectId,
    slug: projectId.slice(0, 8),
    schedule: daily,
    admission: { key: 'cluster:shared-1', slots: 2 },
    running: false,
    ...extra,
  };
}

describe('slots', () => {
  it('a duration: one due time per period at the project’s own fixed offset, the latest at or before now', () => {
    for (const id of ids.slice(0, 50)) {
      const slot = slotAt(daily, id, now, 100)!;
      expect(slot.dueMs).toBeLessThanOrEqual(now);
      expect(slot.nextDueMs - slot.dueMs).toBe(DAY);
      expect(slot.nextDueMs).toBeGreaterThan(now);
      // The same project always lands at the same place in its window.
      expect((slot.dueMs % DAY) / DAY).toBeCloseTo(offsetFraction(id), 6);
      expect(slotAt(daily, id, now + 5 * DAY, 100)!.dueMs - slot.dueMs).toBe(5 * DAY);
    }
    // Spread 0: every project at the window's start (midnight UTC for 24h).
    expect(new Set(ids.slice(0, 50).map((id) => slotAt(daily, id, now, 0)!.dueMs))).toEqual(
      new Set([Date.parse('2026-11-26T00:00:00Z')]),
    );
  });

  it('a thousand tenants of a daily schedule are spread over the day, not all at 00:00', () => {
    const perHour = new Array<number>(24).fill(0);
    for (const id of ids) {
      const hour = Math.floor((slotAt(daily, id, now, 100)!.dueMs % DAY) / HOUR);
      perHour[hour] = (perHour[hour] ?? 0) + 1;
    }
    // About 42 an hour; no hour empty or holding more than twice its share.
    expect(Math.min(...perHour)).toBeGreaterThan(15);
    expect(Math.max(...perHour)).toBeLessThan(84);
    // Half the window: every due time in the first 12 hours.
    expect(ids.every((id) => slotAt(daily, id, now, 50)!.dueMs % DAY < 12 * HOUR)).toBe(true);
  });

  it('cron: due at the firing plus the project’s share of the gap to the next firing', () => {
    const cron = parseSchedule('0 2 * * *');
    const id = ids[0]!;
    expect(slotAt(cron, id, now, 0)).toEqual({
      dueMs: Date.parse('2026-11-26T02:00:00Z'),
      nextDueMs: Date.parse('2026-11-27T02:00:00Z'),
    });
    const spread = slotAt(cron, id, now, 100)!;
    const expected = Date.parse('2026-11-26T02:00:00Z') + Math.floor(offsetFraction(id) * DAY);
    // Either today's due time has passed, or the latest one is yesterday's.
    expect([expected, expected - DAY]).toContain(spread.dueMs);
    expect(spread.dueMs).toBeLessThanOrEqual(now);
    expect(spread.nextDueMs).toBeGreaterThan(now);
  });
});

describe('decisions', () => {
  const tick = {
    nowMs: now,
    startedAtMs: now - 2 * DAY,
    spreadPercent: 100,
    load: new Map(),
    catchUpAllowance: 0,
  };

  it('a slot is satisfied by a backup made at or after it, or by the scheduler having started one', () => {
    const id = ids[1]!;
    const { dueMs } = slotAt(daily, id, now, 100)!;
    const [byBackup] = decide([view(id, { newestMs: dueMs })], tick);
    expect(byBackup).toMatchObject({ action: 'satisfied', by: 'backup' });
    const [byState] = decide([view(id, { lastSlotMs: dueMs })], tick);
    expect(byState).toMatchObject({ action: 'satisfied', by: 'scheduler' });
    // A backup older than the slot, or the previous slot's start, does not satisfy it.
    const [due] = decide([view(id, { newestMs: dueMs - 1, lastSlotMs: dueMs - DAY })], tick);
    expect(due).toMatchObject({ action: 'start', slotMs: dueMs, catchUp: false });
    expect(decide([view(id, { schedule: undefined })], tick)[0]).toMatchObject({ action: 'not_due' });
  });

  it('the project longest without a backup goes first, whatever its slot', () => {
    const [a, b, c] = ids.slice(30, 33) as [string, string, string];
    const views = [
      view(a, { newestMs: now - 2 * HOUR - DAY }),
      view(b, { newestMs: now - 3 * DAY }),
      view(c, { newestMs: undefined }),
    ];
    const order = decide(views, { ...tick, load: new Map([['cluster:shared-1', 0]]) })
      .filter((d) => d.action === 'start')
      .map((d) => d.projectId);
    expect(order).toEqual([c, b]);
  });

  it('never beside a running backup of the project, never beyond the cluster’s slots, oldest slot first', () => {
    const views = ids.slice(0, 10).map((id) => view(id));
    const decisions = decide(views, tick);
    const started = decisions.filter((d) => d.action === 'start');
    expect(started).toHaveLength(2);
    expect(decisions.filter((d) => d.action === 'skip' && d.reason === 'cluster_busy')).toHaveLength(8);
    const slots = decisions.flatMap((d) => (d.action === 'start' || d.action === 'skip' ? [d.slotMs] : []));
    const startedSlots = started.map((d) => (d.action === 'start' ? d.slotMs : 0));
    expect(Math.max(...startedSlots)).toBeLessThanOrEqual(
      Math.min(...slots.filter((s) => !startedSlots.includes(s))),
    );
    // One slot taken by a dump already running on the cluster: one start.
    expect(
      decide(views, { ...tick, load: new Map([['cluster:shared-1', 1]]) }).filter(
        (d) => d.action === 'start',
      ),
    ).toHaveLength(1);
    // Another cluster is not held back by this one.
    const other = view(ids[20]!, { admission: { key: 'cluster:shared-2', slots: 1 } });
    expect(decide([...views, other], tick).find((d) => d.projectId === other.projectId)).toMatchObject({
      action: 'start',
    });
    const [running] = decide([view(ids[0]!, { running: true })], tick);
    expect(running).toMatchObject({ action: 'skip', reason: 'running' });
  });

  it('slots missed before the scheduler started are caught up within the allowance; new ones are not paced', () => {
    const views = ids.slice(0, 5).map((id) => view(id, { admission: { key: `dedicated:${id}`, slots: 1 } }));
    const missed = decide(views, { ...tick, startedAtMs: now, catchUpAllowance: 1 });
    expect(missed.filter((d) => d.action === 'start')).toEqual([expect.objectContaining({ catchUp: true })]);
    expect(missed.filter((d) => d.action === 'skip' && d.reason === 'catch_up_paced')).toHaveLength(4);
    const fresh = decide(views, { ...tick, startedAtMs: now - 2 * DAY, catchUpAllowance: 0 });
    expect(fresh.filter((d) => d.action === 'start')).toHaveLength(5);
  });
});
