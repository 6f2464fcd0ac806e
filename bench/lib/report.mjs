// Formats the suite's results as Markdown tables (printed, and pasted into docs/benchmarks.md as they are).

/**
 * One section's result:
 * - `contenders`: column names, ours first, then the floor, then the peers;
 * - `rows`: `{ metric, unit, values: { [contender]: figure | undefined }, ratio?: { value, label } }`,
 *   where a figure is `{ value, min, max, n }` (median and spread over rounds);
 * - `targets`: `{ name, pass, measured }`;
 * - `notes`: lines printed under the table.
 */
export function formatSection(section) {
  const headers = ['metric', ...section.contenders, 'ratio', 'target'];
  const lines = [`### ${section.title}`, ''];
  lines.push(row(headers), row(headers.map(() => '---')));
  for (const r of section.rows) {
    const cells = [r.metric];
    for (const name of section.contenders) cells.push(formatFigure(r.values[name], r.unit));
    cells.push(r.ratio ? `${formatRatio(r.ratio)} ${r.ratio.label ?? ''}`.trim() : '');
    cells.push(r.target ? `${r.target.pass ? 'PASS' : 'MISS'} (${r.target.name})` : '');
    lines.push(row(cells));
  }
  if (section.notes?.length) lines.push('', ...section.notes.map((note) => `- ${note}`));
  return lines.join('\n');
}

function row(cells) {
  return `| ${cells.join(' | ')} |`;
}

/** `12.3 µs [11.9–13.0]`: the median, then the spread over rounds when there was more than one. */
export function formatFigure(fig, unit) {
  if (!fig || !Number.isFinite(fig.value)) return 'n/a';
  const text = `${formatNumber(fig.value)} ${unit}`;
  if (fig.n > 1 && fig.max !== fig.min) return `${text} [${formatNumber(fig.min)}–${formatNumber(fig.max)}]`;
  return text;
}

export function formatNumber(value) {
  const abs = Math.abs(value);
  if (abs >= 10_000) return Math.round(value).toLocaleString('en-US');
  if (abs >= 100) return value.toFixed(0);
  if (abs >= 10) return value.toFixed(1);
  if (abs >= 1) return value.toFixed(2);
  return value.toPrecision(2);
}

export function formatTargets(sections) {
  const lines = [
    '### Targets',
    '',
    row(['section', 'target', 'measured', 'verdict']),
    row(['---', '---', '---', '---']),
  ];
  for (const section of sections) {
    for (const t of section.targets)
      lines.push(row([section.id, t.name, t.measured, t.pass ? 'PASS' : 'MISS']));
  }
  return lines.join('\n');
}

/** `1.12x [1.05–1.30]`: a ratio's median over rounds and its spread. */
export function formatRatio(ratio) {
  const text = `${ratio.value.toFixed(2)}x`;
  if (ratio.n > 1 && ratio.max !== ratio.min)
    return `${text} [${ratio.min.toFixed(2)}–${ratio.max.toFixed(2)}]`;
  return text;
}
