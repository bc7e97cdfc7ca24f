// handleSummary for every script (`export { handleSummary } from './lib/summary.js'`):
// a short text summary on stdout (thresholds, checks, metrics; k6 prints its own
// only when a script has no handleSummary, and the jslib's textSummary needs the
// internet) and, with SUMMARY_JSON=<path>, k6's whole summary data as JSON in that
// file, for a CI job or a comparison between runs.

const PAD = 34;

function duration(ms) {
  if (ms >= 1000) return `${(ms / 1000).toFixed(2)}s`;
  if (ms >= 1) return `${ms.toFixed(2)}ms`;
  return `${(ms * 1000).toFixed(0)}µs`;
}

function bytes(n) {
  const units = ['B', 'kB', 'MB', 'GB'];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i += 1; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function percent(rate) {
  return `${(rate * 100).toFixed(2)}%`;
}

function number(n, contains) {
  if (contains === 'time') return duration(n);
  if (contains === 'data') return bytes(n);
  return Number.isInteger(n) ? String(n) : n.toFixed(2);
}

// One metric's values, as k6's own summary writes them (trend statistics in the
// order of the summaryTrendStats option).
function values(m, stats) {
  const v = m.values || {};
  switch (m.type) {
    case 'trend': {
      const keys = stats.filter((k) => k in v).concat(Object.keys(v).filter((k) => !stats.includes(k)).sort());
      return keys.map((k) => `${k}=${number(v[k], m.contains)}`).join(' ');
    }
    case 'rate':
      return `${percent(v.rate || 0)} (${v.passes || 0} of ${(v.passes || 0) + (v.fails || 0)})`;
    case 'counter':
      return `${number(v.count || 0, m.contains)} ${number(v.rate || 0, m.contains)}/s`;
    default:
      return `${number(v.value || 0, m.contains)} (min ${number(v.min || 0, m.contains)}, max ${number(v.max || 0, m.contains)})`;
  }
}

function checkLines(group, out) {
  for (const c of group.checks || []) {
    const total = c.passes + c.fails;
    const name = (c.path || c.name).replace(/^::/, '');
    out.push(c.fails ? `    ✗ ${name}: ${c.fails} of ${total} failed` : `    ✓ ${name} (${total})`);
  }
  for (const g of group.groups || []) checkLines(g, out);
}

export function textSummary(data) {
  const out = [''];
  const metrics = data.metrics || {};
  const names = Object.keys(metrics).sort();
  const thresholds = [];
  for (const name of names) {
    for (const [expr, t] of Object.entries(metrics[name].thresholds || {})) {
      thresholds.push(`    ${t.ok ? '✓' : '✗'} ${name}: ${expr}`);
    }
  }
  if (thresholds.length) out.push('  thresholds', ...thresholds, '');
  const checks = [];
  checkLines(data.root_group || {}, checks);
  if (checks.length) out.push('  checks', ...checks, '');
  out.push('  metrics');
  const stats = (data.options && data.options.summaryTrendStats) || [];
  const width = Math.max(PAD, ...names.map((n) => n.length + 2));
  for (const name of names) {
    out.push(`    ${name} ${'.'.repeat(width - name.length)} ${values(metrics[name], stats)}`);
  }
  const ms = data.state && data.state.testRunDurationMs;
  if (ms) out.push('', `  ran ${duration(ms)}`);
  return `${out.join('\n')}\n\n`;
}

export function handleSummary(data) {
  const result = {};
  let text = textSummary(data);
  if (__ENV.SUMMARY_JSON) {
    result[__ENV.SUMMARY_JSON] = JSON.stringify(data, null, 2);
    text += `  summary data written to ${__ENV.SUMMARY_JSON}\n\n`;
  }
  result.stdout = text;
  return result;
}
