import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { createProgress, formatProgress, RateMeter } from './progress.js';

function capture() {
  const chunks: string[] = [];
  const stream = new Writable({
    write(chunk, _enc, cb) {
      chunks.push(chunk.toString());
      cb();
    },
  });
  return { stream, text: () => chunks.join('') };
}

describe('RateMeter', () => {
  it('measures bytes per second over its window', () => {
    const m = new RateMeter(5_000);
    expect(m.rate()).toBeUndefined();
    m.add(0, 0);
    expect(m.rate()).toBeUndefined();
    m.add(1_000, 1_000_000);
    expect(m.rate()).toBe(1_000_000);
    // Samples older than the window drop out: the rate is over the last ~5 s (from t=1 s here), not the run.
    m.add(6_000, 1_500_000);
    m.add(7_000, 11_500_000);
    expect(m.rate()).toBe(1_750_000);
  });

  it('starts over when the counter goes backwards', () => {
    const m = new RateMeter();
    m.add(0, 0);
    m.add(1_000, 5_000);
    m.add(2_000, 100);
    expect(m.rate()).toBeUndefined();
  });
});

describe('formatProgress', () => {
  it('shows stage, bytes (of total), rate and elapsed', () => {
    expect(
      formatProgress(
        'download X',
        { stage: 'downloading', bytes: 1024 * 1024, total: 4 * 1024 * 1024 },
        512 * 1024,
        65_000,
      ),
    ).toBe('download X: downloading  1.00 MiB / 4.00 MiB (25%)  512 KiB/s  1m 05s');
    expect(formatProgress('verify X', { stage: 'restoring' }, undefined, 3_000)).toBe(
      'verify X: restoring  3s',
    );
  });
});

describe('createProgress', () => {
  it('off a terminal: a line per stage change and periodically, never carriage returns', () => {
    let t = 0;
    const out = capture();
    const p = createProgress({
      stream: out.stream,
      isTTY: false,
      enabled: true,
      label: 'backup',
      now: () => t,
      intervalMs: 5_000,
    });
    p.update({ stage: 'queued' });
    t = 1_000;
    p.update({ stage: 'dumping', bytes: 0 });
    t = 2_000;
    p.update({ stage: 'dumping', bytes: 1_000 }); // same stage, not due: silent
    t = 6_500;
    p.update({ stage: 'dumping', bytes: 5_500 }); // due
    p.done();
    const lines = out.text().trimEnd().split('\n');
    expect(lines).toEqual([
      'backup: queued  1s'.replace('1s', '0s'),
      'backup: dumping  0 B  - B/s  1s',
      'backup: dumping  5.37 KiB  1000 B/s  6s',
    ]);
    expect(out.text()).not.toContain('\r');
  });

  it('on a terminal: redraws one line and clears it when done', () => {
    let t = 0;
    const out = capture();
    const p = createProgress({ stream: out.stream, isTTY: true, enabled: true, label: 'dl', now: () => t });
    p.update({ stage: 'downloading', bytes: 0 });
    t = 500;
    p.update({ stage: 'downloading', bytes: 500 });
    p.done();
    expect(out.text()).toBe(
      '\r\x1b[2Kdl: downloading  0 B  - B/s  0s\r\x1b[2Kdl: downloading  500 B  1000 B/s  0s\r\x1b[2K',
    );
  });

  it('prints nothing when disabled (--json), yet still measures the rate', () => {
    let t = 0;
    const out = capture();
    const p = createProgress({ stream: out.stream, isTTY: true, enabled: false, label: 'x', now: () => t });
    p.update({ stage: 'a', bytes: 0 });
    t = 1_000;
    p.update({ stage: 'a', bytes: 2_000 });
    p.note('hello');
    p.done();
    expect(out.text()).toBe('');
    expect(p.rate()).toBe(2_000);
  });
});
