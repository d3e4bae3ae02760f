#!/usr/bin/env node
// node scripts/bench/chart.js [--in bench-results/latest.json] [--out docs/bench.svg]
//
// Draws the bench report (scripts/bench/run.js) as one self-contained SVG: our servers beside the anchors
// (nbdkit file, qemu-nbd, qemu-nbd quorum, nbdcopy). Each fio job is a group of bars whose height is the
// paired ratio to `nbdkit file` on the same job (the median over rounds of server / nbdkit in one round,
// report.pairing; IOPS for 4k jobs, bandwidth for 1m jobs; the dashed line is 1.0x), with a whisker from the
// lowest to the highest per-round ratio, and whose label is the absolute figure (median over rounds);
// reports from before pairing give the ratio of the medians. A third panel compares the resync with nbdcopy.
// Pure: JSON in, SVG text out (renderBenchSvg); run.js calls writeBenchChart after each run.
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');

const PANELS = [
  { title: 'Single file: nbd-mirror linear vs the anchors', group: 'single', servers: ['linear', 'nbdkit', 'qemu-nbd'] },
  // target: issue 4's floor for our mirrors against nbdkit file, drawn as a line.
  { title: '2-leg mirror: nbd-mirror vs nbdkit on one file (ceiling) and qemu-nbd quorum', group: 'mirror', servers: ['mirror-core', 'mirror-disk', 'nbdkit', 'qemu-quorum'], target: 0.8 },
];
const OURS = new Set(['linear', 'mirror-core', 'mirror-disk']);
const COLORS = {
  linear: '#1f6feb',
  'mirror-core': '#1f6feb',
  'mirror-disk': '#58a6ff',
  nbdkit: '#8b949e',
  'qemu-nbd': '#d29922',
  'qemu-quorum': '#d29922',
  nbdcopy: '#8b949e',
  ours: '#1f6feb',
};
const LABELS = {
  linear: 'nbd-mirror linear',
  'mirror-core': 'nbd-mirror mirror (core log)',
  'mirror-disk': 'nbd-mirror mirror (disk log)',
  nbdkit: 'nbdkit file',
  'qemu-nbd': 'qemu-nbd',
  'qemu-quorum': 'qemu-nbd quorum',
};

const WIDTH = 1000;
const PANEL_HEIGHT = 300;
const RESYNC_HEIGHT = 130;
const MARGIN = { left: 60, right: 20, top: 40, bottom: 56 };
/** Ratios above this are drawn clipped (with their true label). */
const RATIO_AXIS_MAX = 2;

const esc = (s) => String(s).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');

function figure(job, r) {
  return job.bs === '4k' ? r.iops : r.bwBytesPerSec;
}

function figureText(job, r) {
  if (job.bs === '4k') return r.iops >= 10000 ? `${(r.iops / 1000).toFixed(1)}k` : String(Math.round(r.iops));
  const mb = r.bwBytesPerSec / 1e6;
  return mb >= 1000 ? `${(mb / 1000).toFixed(2)} GB/s` : `${mb.toFixed(0)} MB/s`;
}

function panel(report, p, y0) {
  const out = [];
  const paired = report.pairing?.groups?.[p.group];
  if (paired !== undefined) {
    const rounds = report.rounds ?? 1;
    const how = rounds > 1 ? `median of ${rounds} paired rounds, whisker min-max` : 'one round';
    out.push(`<text x="${WIDTH - MARGIN.right}" y="${y0 + 22}" class="muted small" text-anchor="end">${esc(how)}</text>`);
  }
  // With pairing, a panel shows its group as measured (nbdkit alone, measured for the other group, is not this panel).
  const servers = p.servers.filter((s) => report.servers?.[s] !== undefined && (report.pairing === undefined || paired?.servers?.includes(s)));
  const jobNames = Object.keys(report.jobs ?? {});
  const plotW = WIDTH - MARGIN.left - MARGIN.right;
  const plotH = PANEL_HEIGHT - MARGIN.top - MARGIN.bottom;
  const top = y0 + MARGIN.top;
  const base = top + plotH;
  out.push(`<text x="${MARGIN.left}" y="${y0 + 22}" class="title">${esc(p.title)}</text>`);
  if (servers.length === 0 || jobNames.length === 0) {
    out.push(`<text x="${MARGIN.left}" y="${top + 30}" class="muted">not in this run</text>`);
    return out;
  }
  // Axis: ratio to nbdkit file.
  for (let t = 0; t <= RATIO_AXIS_MAX; t += 0.5) {
    const y = base - (t / RATIO_AXIS_MAX) * plotH;
    out.push(`<line x1="${MARGIN.left}" x2="${WIDTH - MARGIN.right}" y1="${y}" y2="${y}" class="${t === 1 ? 'one' : 'grid'}"/>`);
    out.push(`<text x="${MARGIN.left - 6}" y="${y + 4}" class="axis" text-anchor="end">${t.toFixed(1)}x</text>`);
  }
  out.push(`<text x="14" y="${top + plotH / 2}" class="axis" transform="rotate(-90 14 ${top + plotH / 2})" text-anchor="middle">${paired !== undefined ? 'vs nbdkit file, paired' : 'vs nbdkit file'}</text>`);
  const yOf = (ratio) => base - (Math.min(ratio, RATIO_AXIS_MAX) / RATIO_AXIS_MAX) * plotH;
  if (p.target !== undefined) {
    out.push(`<line x1="${MARGIN.left}" x2="${WIDTH - MARGIN.right}" y1="${yOf(p.target)}" y2="${yOf(p.target)}" class="target"/>`);
  }
  const groupW = plotW / jobNames.length;
  const barW = Math.min(34, (groupW - 18) / servers.length);
  jobNames.forEach((jobName, j) => {
    const job = report.jobs[jobName];
    const anchor = report.servers.nbdkit?.jobs?.[jobName];
    const pairedJob = paired?.jobs?.[jobName];
    const gx = MARGIN.left + j * groupW + (groupW - barW * servers.length) / 2;
    servers.forEach((s, i) => {
      let r = report.servers[s].jobs?.[jobName];
      if (r === undefined) return;
      // The label: this group's median (nbdkit runs in two groups, each with its own figures).
      if (pairedJob?.median?.[s] !== undefined) r = pairedJob.metric === 'iops' ? { iops: pairedJob.median[s] } : { bwBytesPerSec: pairedJob.median[s] };
      let ratio = null;
      let range = null;
      if (pairedJob !== undefined) {
        const pr = s === 'nbdkit' ? { median: 1, min: 1, max: 1 } : pairedJob.ratios?.[`${s}/nbdkit`];
        if (pr !== undefined) {
          ratio = pr.median;
          if (pr.max > pr.min) range = pr;
        }
      } else if (anchor !== undefined && figure(job, anchor) > 0) ratio = figure(job, r) / figure(job, anchor);
      const h = ratio === null ? 0 : base - yOf(ratio);
      const x = gx + i * barW;
      const cls = OURS.has(s) ? 'ours' : 'anchor';
      const ratioTitle = ratio === null ? '' : ` (${ratio.toFixed(2)}x nbdkit${pairedJob !== undefined ? `, paired median${range === null ? '' : `; rounds ${range.min.toFixed(2)}-${range.max.toFixed(2)}x`}` : ''})`;
      out.push(
        `<rect x="${x.toFixed(1)}" y="${(base - h).toFixed(1)}" width="${(barW - 3).toFixed(1)}" height="${h.toFixed(1)}" fill="${COLORS[s] ?? '#888'}" class="${cls}"><title>${esc(LABELS[s] ?? s)} ${esc(jobName)}: ${esc(figureText(job, r))}${esc(ratioTitle)}</title></rect>`,
      );
      const cx = x + (barW - 3) / 2;
      if (range !== null) {
        out.push(`<line x1="${cx.toFixed(1)}" x2="${cx.toFixed(1)}" y1="${yOf(range.max).toFixed(1)}" y2="${yOf(range.min).toFixed(1)}" class="range"/>`);
      }
      const lx = cx;
      const ly = Math.min(base - h, range === null ? base : yOf(range.max)) - 4;
      out.push(`<text x="${lx.toFixed(1)}" y="${ly.toFixed(1)}" class="value" transform="rotate(-60 ${lx.toFixed(1)} ${ly.toFixed(1)})">${esc(figureText(job, r))}</text>`);
    });
    out.push(`<text x="${(MARGIN.left + (j + 0.5) * groupW).toFixed(1)}" y="${base + 18}" class="job" text-anchor="middle">${esc(jobName)}</text>`);
    out.push(`<text x="${(MARGIN.left + (j + 0.5) * groupW).toFixed(1)}" y="${base + 32}" class="muted small" text-anchor="middle">${job.bs === '4k' ? 'IOPS' : 'bandwidth'}</text>`);
  });
  // Legend.
  let lx = MARGIN.left;
  const ly = base + 48;
  for (const s of servers) {
    out.push(`<rect x="${lx}" y="${ly - 9}" width="10" height="10" fill="${COLORS[s] ?? '#888'}"/>`);
    const text = LABELS[s] ?? s;
    out.push(`<text x="${lx + 14}" y="${ly}" class="legend${OURS.has(s) ? ' bold' : ''}">${esc(text)}</text>`);
    lx += 24 + text.length * 6.6;
  }
  if (p.target !== undefined) {
    out.push(`<line x1="${lx}" x2="${lx + 16}" y1="${ly - 4}" y2="${ly - 4}" class="target"/>`);
    out.push(`<text x="${lx + 20}" y="${ly}" class="legend target-label">target ${p.target}x (issue 4)</text>`);
  }
  return out;
}

function resyncPanel(report, y0) {
  const out = [];
  const r = report.resync;
  out.push(`<text x="${MARGIN.left}" y="${y0 + 22}" class="title">Full resync of ${esc(((r?.bytes ?? 0) / 2 ** 30).toFixed(1))} GiB: nbd-mirror vs nbdcopy (leg A to leg B)</text>`);
  if (r === undefined || r === null || !(r.oursMBps > 0)) {
    out.push(`<text x="${MARGIN.left}" y="${y0 + 50}" class="muted">not in this run</text>`);
    return out;
  }
  const rows = [
    // paired: nbdcopy time / ours within each round, median over rounds (newer reports).
    { label: 'nbd-mirror, end to end (spawn to in-sync)', mbps: r.oursMBps, color: COLORS.ours, ours: true, paired: r.endToEndRatioPaired },
    // engineMBps: resync start to in-sync (newer reports); engineReportedMBps: the engine's last progress rate.
    ...(r.engineMBps > 0
      ? [{ label: 'nbd-mirror engine (resync start to in-sync)', mbps: r.engineMBps, color: '#58a6ff', ours: true, paired: r.engineRatioPaired }]
      : r.engineReportedMBps > 0
        ? [{ label: 'nbd-mirror engine rate', mbps: r.engineReportedMBps, color: '#58a6ff', ours: true }]
        : []),
    ...(r.nbdcopyMBps > 0 ? [{ label: 'nbdcopy file to file', mbps: r.nbdcopyMBps, color: COLORS.nbdcopy, ours: false }] : []),
  ];
  const max = Math.max(...rows.map((x) => x.mbps));
  const labelW = 300;
  const barMax = WIDTH - MARGIN.left - MARGIN.right - labelW - 290; // room for the value and its ratio text
  rows.forEach((row, i) => {
    const y = y0 + 40 + i * 26;
    const w = (row.mbps / max) * barMax;
    out.push(`<text x="${MARGIN.left}" y="${y + 13}" class="legend${row.ours ? ' bold' : ''}">${esc(row.label)}</text>`);
    out.push(`<rect x="${MARGIN.left + labelW}" y="${y}" width="${w.toFixed(1)}" height="18" fill="${row.color}"/>`);
    const p = row.paired;
    const paired = p ? ` (${p.median.toFixed(2)}x nbdcopy, paired${p.max > p.min ? `; rounds ${p.min.toFixed(2)}-${p.max.toFixed(2)}x` : ''})` : null;
    const ratio = !row.ours ? '' : (paired ?? (r.nbdcopyMBps > 0 ? ` (${(row.mbps / r.nbdcopyMBps).toFixed(2)}x nbdcopy)` : ''));
    out.push(`<text x="${(MARGIN.left + labelW + w + 6).toFixed(1)}" y="${y + 13}" class="value">${row.mbps.toFixed(0)} MB/s${ratio}</text>`);
  });
  return out;
}

/** The whole SVG for one bench report. */
export function renderBenchSvg(report) {
  const height = PANELS.length * PANEL_HEIGHT + RESYNC_HEIGHT + 60;
  const m = report.machine ?? {};
  const parts = [];
  parts.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${WIDTH}" height="${height}" viewBox="0 0 ${WIDTH} ${height}" font-family="system-ui, -apple-system, Segoe UI, Roboto, sans-serif">`);
  parts.push(`<style>
  .title { font-size: 15px; font-weight: 600; fill: #1f2328; }
  .axis, .job { font-size: 11px; fill: #57606a; }
  .job { font-weight: 600; fill: #1f2328; }
  .grid { stroke: #d0d7de; stroke-width: 1; }
  .one { stroke: #1f2328; stroke-width: 1; stroke-dasharray: 4 3; }
  .target { stroke: #cf222e; stroke-width: 1; stroke-dasharray: 2 3; }
  .target-label { fill: #cf222e; }
  .range { stroke: #1f2328; stroke-width: 1.5; }
  .value { font-size: 10px; fill: #1f2328; }
  .legend { font-size: 11px; fill: #1f2328; }
  .bold { font-weight: 700; }
  .muted { font-size: 12px; fill: #57606a; }
  .small { font-size: 10px; }
</style>`);
  parts.push(`<rect width="100%" height="100%" fill="#ffffff"/>`);
  const load = Array.isArray(m.loadavgAtStart) ? ` · load ${m.loadavgAtStart[0]}` : '';
  parts.push(
    `<text x="${MARGIN.left}" y="24" class="muted">nbd-mirror bench ${esc(String(report.date ?? '').slice(0, 16).replace('T', ' '))} · ${esc(m.cpuModel ?? '?')} x${esc(m.cpuCount ?? '?')}${esc(load)} · node ${esc(m.node ?? '?')} · ${esc(m.fio ?? 'fio')} · ${esc(m.nbdkit ?? '')} · ${esc(m.qemuNbd?.split(' (')[0] ?? '')} · ${esc(report.backingDir ?? '?')}${report.pairing !== undefined ? '' : ` · median of ${esc(report.rounds ?? 1)}`}</text>`,
  );
  PANELS.forEach((p, i) => parts.push(...panel(report, p, 30 + i * PANEL_HEIGHT)));
  parts.push(...resyncPanel(report, 30 + PANELS.length * PANEL_HEIGHT));
  parts.push('</svg>');
  return `${parts.join('\n')}\n`;
}

/** Read the report, write the chart; returns the output path. */
export async function writeBenchChart(inPath = join(ROOT, 'bench-results', 'latest.json'), outPath = join(ROOT, 'docs', 'bench.svg')) {
  const report = JSON.parse(await readFile(inPath, 'utf8'));
  await mkdir(dirname(outPath), { recursive: true });
  await writeFile(outPath, renderBenchSvg(report));
  return outPath;
}

if (process.argv[1] !== undefined && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const { values } = parseArgs({ options: { in: { type: 'string' }, out: { type: 'string' } } });
  const out = await writeBenchChart(values.in ? resolve(values.in) : undefined, values.out ? resolve(values.out) : undefined);
  console.log(`wrote ${out}`);
}
