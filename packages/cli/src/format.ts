/** Human output: plain aligned tables, no colours (they go into tickets and chat). */
export function table(headers: string[], rows: (string | number | null | undefined)[][]): string {
  const cells = [headers, ...rows.map((r) => r.map((c) => (c === null || c === undefined ? '-' : String(c))))];
  const widths = headers.map((_, i) => Math.max(...cells.map((r) => (r[i] ?? '').length)));
  return cells.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join('  ')).join('\n');
}

export function printJson(value: unknown): void {
  process.stdout.write(JSON.stringify(value, null, 2) + '\n');
}

export function ms(v: number | null | undefined): string {
  if (v === null || v === undefined) return '-';
  if (v < 1000) return `${v} ms`;
  return `${(v / 1000).toFixed(1)} s`;
}
