// npx tsx bench/render.ts [results.json]: prints the README's performance table (markdown) from a
// benchmark run, with the machine and the run's caveats.
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { machineLine, type Report, TABLE_HEADER, tableRows } from './report.js';

const cell = (text: string) => text.replaceAll('|', '\\|');

export function renderMarkdown(report: Report): string {
  const rows = [TABLE_HEADER, ...tableRows(report.results)];
  const lines = [
    `Measured ${report.date.slice(0, 10)} with \`${report.command}\` (${report.quick ? 'quick' : 'full'} run, ` +
      `${report.seconds} s) on ${machineLine(report.machine)}; 1-minute load average ` +
      `${report.machine.loadAverage.start.toFixed(2)} at the start` +
      (report.machine.loadAverage.end === undefined
        ? ''
        : `, ${report.machine.loadAverage.end.toFixed(2)} at the end`) +
      '. Medians of alternating runs; ratio = function / baseline.',
    '',
    `| ${rows[0]!.map(cell).join(' | ')} |`,
    `| ${rows[0]!.map(() => '---').join(' | ')} |`,
    ...rows.slice(1).map((r) => `| ${r.map(cell).join(' | ')} |`),
  ];
  const notes = [...report.results.filter((r) => r.note).map((r) => `${r.name}: ${r.note}`), ...report.notes];
  if (notes.length > 0) lines.push('', ...notes.map((n) => `- ${n}`));
  return `${lines.join('\n')}\n`;
}

const file = process.argv[2] ?? path.join(import.meta.dirname, 'results.json');
const report = JSON.parse(await readFile(file, 'utf8')) as Report;
process.stdout.write(renderMarkdown(report));
