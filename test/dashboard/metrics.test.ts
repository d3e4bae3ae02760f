// /metrics on the dashboard listener of the real CLI server: the scrape parses as the Prometheus text
// exposition format (checked line by line: HELP/TYPE before samples, label syntax, float values,
// histogram buckets cumulative and ending in +Inf = _count), and the values move after real NBD I/O.
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { NbdClient } from '../../src/nbd/client/client.js';
import { useTempDir } from '../helpers/e2e.js';
import { startServer } from '../helpers/server.js';
import { createSparseFile, MiB, sectorsOf } from '../helpers/tmp.js';
import { freePort } from './dashboard-helpers.js';

const SIZE = 8 * MiB;
const dir = useTempDir('metrics');

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** A strict reader of the text format (version 0.0.4): throws naming the first bad line. */
function parseExposition(text: string): { samples: Sample[]; types: Map<string, string> } {
  const types = new Map<string, string>();
  const samples: Sample[] = [];
  const sampleRe = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (-?[0-9.eE+-]+|NaN|[+-]Inf)$/;
  const labelRe = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)/y;
  for (const line of text.split('\n')) {
    if (line === '') continue;
    const meta = /^# (HELP|TYPE) ([a-zA-Z_:][a-zA-Z0-9_:]*) (.*)$/.exec(line);
    if (meta) {
      if (meta[1] === 'TYPE') {
        if (!['counter', 'gauge', 'histogram', 'summary', 'untyped'].includes(meta[3]!)) throw new Error(`bad TYPE: ${line}`);
        types.set(meta[2]!, meta[3]!);
      }
      continue;
    }
    if (line.startsWith('#')) continue;
    const m = sampleRe.exec(line);
    if (!m) throw new Error(`not a sample line: ${line}`);
    const labels: Record<string, string> = {};
    if (m[3] !== undefined && m[3].length > 0) {
      labelRe.lastIndex = 0;
      while (labelRe.lastIndex < m[3].length) {
        const l = labelRe.exec(m[3]);
        if (!l) throw new Error(`bad labels: ${line}`);
        labels[l[1]!] = l[2]!;
      }
    }
    const name = m[1]!;
    const family = name.replace(/_(bucket|sum|count)$/, '');
    if (!types.has(name) && !types.has(family)) throw new Error(`sample before its TYPE: ${line}`);
    samples.push({ name, labels, value: Number(m[4]) });
  }
  return { samples, types };
}

function value(samples: Sample[], name: string, labels: Record<string, string>): number | undefined {
  return samples.find((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))?.value;
}

async function scrape(base: string): Promise<{ samples: Sample[]; types: Map<string, string> }> {
  const r = await fetch(`${base}/metrics`);
  expect(r.status).toBe(200);
  expect(r.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
  return parseExposition(await r.text());
}

describe('dashboard /metrics', () => {
  it('parses as the exposition format and moves after NBD I/O', async () => {
    const d = dir();
    const a = await createSparseFile(join(d, 'a.img'), SIZE);
    const b = await createSparseFile(join(d, 'b.img'), SIZE);
    const port = await freePort();
    const server = await startServer({
      dir: d,
      tables: [{ table: `0 ${sectorsOf(SIZE)} mirror core 2 128 nosync 2 ${a} 0 ${b} 0`, name: 'vol' }],
      extraArgs: ['--dashboard', String(port)],
    });
    const base = `http://127.0.0.1:${port}`;
    const before = await scrape(base);
    expect(before.types.get('nbd_mirror_requests_total')).toBe('counter');
    expect(before.types.get('nbd_mirror_request_duration_seconds')).toBe('histogram');
    expect(value(before.samples, 'nbd_mirror_regions', { volume: 'vol' })).toBe(SIZE / (128 * 512));
    expect(value(before.samples, 'nbd_mirror_regions_in_sync', { volume: 'vol' })).toBe(SIZE / (128 * 512));
    expect(value(before.samples, 'nbd_mirror_held_writes', { volume: 'vol' })).toBe(0);
    expect(value(before.samples, 'nbd_mirror_leg_health', { volume: 'vol', leg: '1', health: 'A' })).toBe(1);
    expect(value(before.samples, 'nbd_mirror_leg_health', { volume: 'vol', leg: '1', health: 'D' })).toBe(0);
    // Single node: the cluster gauges have no samples.
    expect(before.samples.some((s) => s.name.startsWith('nbd_mirror_cluster_'))).toBe(false);
    const writesBefore = value(before.samples, 'nbd_mirror_requests_total', { export: 'vol', command: 'write' }) ?? 0;
    const flushesBefore = value(before.samples, 'nbd_mirror_log_flushes_total', { volume: 'vol' }) ?? 0;

    const client = await NbdClient.connect(server.uri('vol'));
    const WRITES = 16;
    for (let i = 0; i < WRITES; i++) await client.write(Buffer.alloc(64 * 1024, i), i * 128 * 1024, { fua: false });
    const target = Buffer.alloc(4096);
    await client.read(target, 0);
    await client.flush();
    await client.close();

    const after = await scrape(base);
    const w = { export: 'vol', command: 'write' };
    expect((value(after.samples, 'nbd_mirror_requests_total', w) ?? 0) - writesBefore).toBe(WRITES);
    expect(value(after.samples, 'nbd_mirror_bytes_total', w)).toBe(WRITES * 64 * 1024);
    expect(value(after.samples, 'nbd_mirror_requests_total', { export: 'vol', command: 'read' })).toBeGreaterThanOrEqual(1);
    expect(value(after.samples, 'nbd_mirror_requests_total', { export: 'vol', command: 'flush' })).toBeGreaterThanOrEqual(1);
    expect(value(after.samples, 'nbd_mirror_log_flushes_total', { volume: 'vol' })).toBeGreaterThan(flushesBefore);
    // The write histogram: cumulative buckets, +Inf equals _count equals the request count, a positive sum.
    const buckets = after.samples.filter((s) => s.name === 'nbd_mirror_request_duration_seconds_bucket' && s.labels.export === 'vol' && s.labels.command === 'write');
    expect(buckets.length).toBeGreaterThan(2);
    for (let i = 1; i < buckets.length; i++) expect(buckets[i]!.value).toBeGreaterThanOrEqual(buckets[i - 1]!.value);
    expect(buckets.at(-1)!.labels.le).toBe('+Inf');
    const count = value(after.samples, 'nbd_mirror_request_duration_seconds_count', w);
    expect(buckets.at(-1)!.value).toBe(count);
    expect(count).toBe(value(after.samples, 'nbd_mirror_requests_total', w));
    expect(value(after.samples, 'nbd_mirror_request_duration_seconds_sum', w)).toBeGreaterThan(0);
    // Process metrics from prom-client ride along.
    expect(after.types.has('nbd_mirror_process_resident_memory_bytes')).toBe(true);
    await server.stop();
  });
});
