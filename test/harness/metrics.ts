// Reading a /metrics answer in tests: the Prometheus text format parsed into samples, and the
// value of one series looked up by name and labels.
import assert from 'node:assert/strict';

export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** The samples of a Prometheus text exposition (comments and blank lines skipped). */
export function parsePrometheusText(text: string): Sample[] {
  const samples: Sample[] = [];
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\d+)?$/.exec(line);
    assert.ok(match, `not a sample line: ${line}`);
    const [, name, rawLabels, rawValue] = match as unknown as [string, string, string | undefined, string];
    const labels: Record<string, string> = {};
    const labelRe = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)",?/g;
    for (const m of (rawLabels ?? '').matchAll(labelRe)) {
      labels[m[1] as string] = (m[2] as string).replace(/\\n/g, '\n').replace(/\\(.)/g, '$1');
    }
    const value = rawValue === '+Inf' ? Infinity : rawValue === '-Inf' ? -Infinity : Number(rawValue);
    samples.push({ name, labels, value });
  }
  return samples;
}

/**
 * The value of the one series named `name` whose labels include `labels`, summed over the
 * series that match (0 when none does: a counter not yet incremented has no series).
 */
export function metricValue(
  text: string | Sample[],
  name: string,
  labels: Record<string, string> = {},
): number {
  const samples = typeof text === 'string' ? parsePrometheusText(text) : text;
  return samples
    .filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))
    .reduce((sum, s) => sum + s.value, 0);
}

/** GET a /metrics URL: its content type and parsed samples. */
export async function scrape(
  url: string,
): Promise<{ contentType: string | null; text: string; samples: Sample[] }> {
  const res = await fetch(url);
  assert.equal(res.status, 200, `GET ${url}: ${res.status}`);
  const text = await res.text();
  return { contentType: res.headers.get('content-type'), text, samples: parsePrometheusText(text) };
}
