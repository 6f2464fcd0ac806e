import { UsageError } from './errors.js';

/** Milliseconds per duration unit accepted on the command line. */
const DURATION_UNITS_MS: Record<string, number> = {
  ms: 1,
  s: 1_000,
  m: 60_000,
  h: 3_600_000,
  d: 86_400_000,
  w: 604_800_000,
};
const DURATION_PART = /(\d+(?:\.\d+)?)(ms|s|m|h|d|w)/g;
const NEVER = new Set(['infinity', 'inf', 'never']);

/**
 * Parses a duration such as `7d`, `12h`, `30m`, `45s`, `500ms` or `1h30m` into milliseconds; `Infinity`
 * (or `never`) gives `Infinity` and a bare `0` gives 0. A bare number is refused: minutes or milliseconds?
 */
export function parseDuration(text: string, flag: string): number {
  const input = text.trim().toLowerCase();
  if (NEVER.has(input)) return Number.POSITIVE_INFINITY;
  if (input === '0') return 0;
  let totalMs = 0;
  let matched = '';
  for (const [part, amount, unit] of input.matchAll(DURATION_PART)) {
    totalMs += Number(amount) * (DURATION_UNITS_MS[unit as string] as number);
    matched += part;
  }
  if (matched === '' || matched !== input) {
    throw new UsageError(
      `${flag} needs a duration such as 7d, 12h, 30m, 45s, 500ms or Infinity, got "${text}"`,
    );
  }
  return Math.round(totalMs);
}

const SIZE_UNITS: Record<string, number> = {
  '': 1,
  b: 1,
  k: 1024,
  kib: 1024,
  kb: 1000,
  m: 1024 ** 2,
  mib: 1024 ** 2,
  mb: 1000 ** 2,
  g: 1024 ** 3,
  gib: 1024 ** 3,
  gb: 1000 ** 3,
  t: 1024 ** 4,
  tib: 1024 ** 4,
  tb: 1000 ** 4,
};
const SIZE = /^(\d+(?:\.\d+)?)\s*([a-z]*)$/;

/**
 * Parses a byte size: a plain number of bytes, binary units (`K`, `KiB`, `M`, `MiB`, `G`, `GiB`, `T`,
 * `TiB`, powers of 1024, as `du` reads them) or decimal ones (`KB`, `MB`, `GB`, `TB`, powers of 1000).
 * `Infinity` means no limit.
 */
export function parseSize(text: string, flag: string): number {
  const input = text.trim().toLowerCase();
  if (NEVER.has(input)) return Number.POSITIVE_INFINITY;
  const match = SIZE.exec(input);
  const unit = match ? SIZE_UNITS[match[2] as string] : undefined;
  if (!match || unit === undefined) {
    throw new UsageError(`${flag} needs a size such as 500MiB, 2GiB, 10GB or 1048576, got "${text}"`);
  }
  return Math.floor(Number(match[1]) * unit);
}

/** Parses an entry count: an integer >= 1, or `Infinity`. */
export function parseCount(text: string, flag: string): number {
  const input = text.trim().toLowerCase();
  if (NEVER.has(input)) return Number.POSITIVE_INFINITY;
  if (!/^\d+$/.test(input) || Number(input) < 1) {
    throw new UsageError(
      `${flag} needs an integer >= 1 or Infinity, got "${text}" (to empty a sublayer: clear)`,
    );
  }
  return Number(input);
}

const BINARY_UNITS = ['KiB', 'MiB', 'GiB', 'TiB', 'PiB'];

/** `512 B`, `1.5 KiB`, `47.1 MiB`: powers of 1024, one decimal. */
export function formatBytes(bytes: number): string {
  if (bytes < 1024) return `${Math.round(bytes)} B`;
  let value = bytes;
  let unit = -1;
  // Divide while the rounded value would still read 1024 or more ("1024.0 KiB" should be "1.0 MiB").
  while (value >= 1023.95 && unit < BINARY_UNITS.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(1)} ${BINARY_UNITS[unit]}`;
}

const DURATION_STEPS: [string, number][] = [
  ['d', 86_400_000],
  ['h', 3_600_000],
  ['m', 60_000],
  ['s', 1_000],
];

/** A compact duration with its two largest units: `2d 3h`, `5m 10s`, `45s`, `800ms`. */
export function formatDuration(ms: number): string {
  if (!Number.isFinite(ms)) return 'never';
  const whole = Math.max(0, Math.round(ms));
  if (whole < 1_000) return `${whole}ms`;
  const parts: string[] = [];
  let rest = whole;
  for (const [unit, size] of DURATION_STEPS) {
    const amount = Math.floor(rest / size);
    rest -= amount * size;
    if (amount > 0 || parts.length > 0) parts.push(`${amount}${unit}`);
    if (parts.length === 2) break;
  }
  return parts.filter((part, index) => index === 0 || !part.startsWith('0')).join(' ');
}

/** `5m ago`, or `in 2h` for a time in the future (a clock that runs ahead on another host). */
export function formatAgo(ms: number): string {
  return ms < 0 ? `in ${formatDuration(-ms)}` : `${formatDuration(ms)} ago`;
}

/** How a ttl reads in help and headers: `7d` or `none`. */
export function describeTtl(ttlMs: number): string {
  return Number.isFinite(ttlMs) ? formatDuration(ttlMs) : 'none';
}
