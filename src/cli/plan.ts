import path from 'node:path';
import type { CacheManager, ForeignItem, JanitorPlan, KeptItem, PruneReport } from '../index.js';
import { plural, renderTable } from './table.js';
import { formatAgo, formatBytes } from './units.js';

/** One sublayer's plan, made by `prune` or `clear` before asking, and carried out as shown. */
export interface SublayerPlan {
  readonly name: string;
  readonly cache: CacheManager;
  readonly plan: JanitorPlan;
}

/** What carrying out one sublayer's plan did. */
export interface SublayerOutcome {
  readonly name: string;
  readonly report: PruneReport;
}

const KEPT_BECAUSE: Record<KeptItem['reason'], string> = {
  'recently-used': 'used in the last 130 s (2 × touchIntervalMs + evictionGraceMs), maybe still being read',
  locked: 'a writer holds its lock',
  'just-written': 'just written',
  changed: 'changed since the plan was shown (used, renewed or republished)',
};

const FOREIGN_BECAUSE: Record<ForeignItem['reason'], string> = {
  'unknown-name': 'a name payload-cache never gives a file',
  'not-a-regular-file': 'a directory, link or special file where payload-cache keeps regular files',
  'unproven-payload': 'a file without manifest that payload-cache cannot prove it wrote',
  'invalid-manifest': 'not a payload-cache manifest',
  'foreign-lock': 'a lock-named directory holding files payload-cache does not put there',
  'unproven-extraction': 'an extraction-named directory without a payload-cache marker for it',
};

/** The plan as a table of what goes, then what stays and why, then what is left alone as foreign. */
export function renderPlan(plans: readonly SublayerPlan[], title: string, nowMs: number): string[] {
  const remove = plans.flatMap(({ name, plan }) => plan.remove.map((item) => ({ name, item })));
  const lines: string[] = [];
  if (remove.length === 0) lines.push(`${title}: nothing.`);
  else {
    const rows = remove.map(({ name, item }) => [
      name,
      path.basename(item.path),
      formatBytes(item.sizeBytes),
      item.reason,
      item.lastUsedAt ? formatAgo(nowMs - item.lastUsedAt.getTime()) : '-',
    ]);
    lines.push(`${title}:`);
    lines.push(
      ...renderTable(
        ['SUBLAYER', 'NAME', 'SIZE', 'REASON', 'LAST USED'],
        rows,
        ['left', 'left', 'right'],
        '  ',
      ),
    );
  }
  for (const { name, plan } of plans) {
    for (const kept of plan.kept) lines.push(`Keeping ${name}/${kept.key}: ${KEPT_BECAUSE[kept.reason]}`);
  }
  lines.push(...renderForeign(plans.flatMap(({ plan }) => plan.foreign)));
  const bytes = remove.reduce((sum, { item }) => sum + item.sizeBytes, 0);
  lines.push(`Total: ${plural(remove.length, 'file')}, ${formatBytes(bytes)}.`);
  return lines;
}

/** Lines for things payload-cache did not write and so never deletes. */
export function renderForeign(foreign: readonly ForeignItem[]): string[] {
  return foreign.map((item) => `Left alone: ${item.path} (${FOREIGN_BECAUSE[item.reason]})`);
}

/** What was removed and kept, for the human report after a prune or clear. */
export function renderOutcome(outcomes: readonly SublayerOutcome[]): string[] {
  const lines: string[] = [];
  const removed = outcomes.flatMap(({ name, report }) => report.removed.map((item) => ({ name, item })));
  if (removed.length > 0) {
    const rows = removed.map(({ name, item }) => [name, item.key ?? '-', item.reason, item.path]);
    lines.push('Removed:', ...renderTable(['SUBLAYER', 'KEY', 'REASON', 'PATH'], rows, [], '  '));
  }
  for (const { name, report } of outcomes) {
    for (const kept of report.kept) lines.push(`Kept ${name}/${kept.key}: ${KEPT_BECAUSE[kept.reason]}`);
  }
  return lines;
}

/** `--json` of a plan: `{ remove, keep, foreign }`, each item with its sublayer. */
export function planJson(plans: readonly SublayerPlan[]) {
  return {
    remove: plans.flatMap(({ name, plan }) =>
      plan.remove.map((item) => ({
        sublayer: name,
        key: item.key ?? null,
        path: item.path,
        sizeBytes: item.sizeBytes,
        reason: item.reason,
      })),
    ),
    keep: plans.flatMap(({ name, plan }) => inSublayer(name, plan.kept)),
    foreign: plans.flatMap(({ name, plan }) => inSublayer(name, plan.foreign)),
  };
}

/** `--json` of what was done: `{ removed, kept, foreign }`, each item with its sublayer. */
export function outcomeJson(outcomes: readonly SublayerOutcome[]) {
  return {
    removed: outcomes.flatMap(({ name, report }) =>
      report.removed.map((item) => ({
        sublayer: name,
        key: item.key ?? null,
        path: item.path,
        reason: item.reason,
      })),
    ),
    kept: outcomes.flatMap(({ name, report }) => inSublayer(name, report.kept)),
    foreign: outcomes.flatMap(({ name, report }) => inSublayer(name, report.foreign)),
  };
}

function inSublayer<T extends object>(sublayer: string, items: readonly T[]) {
  return items.map((item) => ({ sublayer, ...item }));
}

/** Carries out each sublayer's plan exactly as it was shown. */
export async function carryOutPlans(plans: readonly SublayerPlan[]): Promise<SublayerOutcome[]> {
  const outcomes: SublayerOutcome[] = [];
  for (const { name, cache, plan } of plans) outcomes.push({ name, report: await cache.carryOut(plan) });
  return outcomes;
}
