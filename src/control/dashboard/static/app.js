// nbd-mirror dashboard page (plain ES module, served as is).
// One WebSocket to /api/live: a `hello` (all volumes, history, events), then a `tick` every second and an
// `event` as each happens. The region map of each mirror comes from GET /api/volumes/NAME/regions as
// 2 bits per region (0 clean, 1 dirty, 2 out of sync, 3 recovering) and is drawn on a canvas, so a
// million regions cost one 256 KiB fetch and one ImageData, never a DOM node per region.
// Actions POST /api/volumes/NAME/ACTION with the token from the URL fragment (#token=...); without it
// the page is read-only. On a lost connection it reconnects with backoff and says when the server restarted.

const HISTORY_MAX = 300;
const REGION_POLL_MS = 1000;
const RECONNECT_MS_MIN = 500;
const RECONNECT_MS_MAX = 5000;
const EVENTS_SHOWN_MAX = 300;
const MAP_WIDTH_PX_MIN = 256;
const MAP_WIDTH_PX_MAX = 2048;
const MAP_HEIGHT_PX_MAX = 160;
// clean, dirty, out of sync, recovering (RGBA as little-endian uint32: 0xAABBGGRR)
const REGION_COLORS = [0xff3a7a2a, 0xff2299d2, 0xff4951f8, 0xffffa658];
const REGION_NAMES = ['clean', 'dirty', 'out of sync', 'recovering'];
// Which state wins when several regions share a pixel: trouble first.
const REGION_RANK = [0, 1, 3, 2];
const HEALTH_TEXT = { A: 'alive', F: 'flush failed', D: 'write failed', S: 'sync failed', R: 'read failed', U: 'unknown' };

const token = takeToken();
const state = { volumes: new Map(), history: new Map(), server: null, ws: null, backoffMs: RECONNECT_MS_MIN, regionBusy: new Set() };
const $ = (sel, root = document) => root.querySelector(sel);

function takeToken() {
  const m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (m) {
    sessionStorage.setItem('nbd-mirror-token', decodeURIComponent(m[1]));
    history.replaceState(null, '', location.pathname); // keep it out of the address bar and screenshots
  }
  return sessionStorage.getItem('nbd-mirror-token');
}

// ------------------------------------------------------------------ formatting

function fmtBytes(n) {
  if (n === null || n === undefined || !isFinite(n)) return '–';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (Math.abs(n) >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(n >= 100 || i === 0 ? 0 : 1)} ${u[i]}`;
}
const fmtRate = (n) => (n > 0 ? `${fmtBytes(n)}/s` : '0 B/s');
function fmtEta(sec) {
  if (sec === null || sec === undefined || !isFinite(sec)) return '–';
  if (sec < 1) return 'now';
  const h = Math.floor(sec / 3600), m = Math.floor((sec % 3600) / 60), s = Math.floor(sec % 60);
  return h > 0 ? `${h}h ${m}m` : m > 0 ? `${m}m ${s}s` : `${s}s`;
}
const fmtMs = (ms) => (ms === null || ms === undefined ? '–' : !isFinite(ms) ? '>10 s' : ms < 1 ? `${(ms * 1000).toFixed(0)} µs` : `${ms.toFixed(ms < 10 ? 2 : 0)} ms`);
const fmtTime = (iso) => new Date(iso).toLocaleTimeString([], { hour12: false });

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') e.className = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) e.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c instanceof Node ? c : String(c));
  return e;
}

function toast(text, isError = false) {
  const d = el('div', { class: isError ? 'err' : '' }, text);
  $('#toast').append(d);
  setTimeout(() => d.remove(), isError ? 8000 : 4000);
}

// ------------------------------------------------------------------ live connection

function connect() {
  const conn = $('#conn');
  const ws = new WebSocket(`${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/api/live`);
  state.ws = ws;
  ws.onopen = () => {
    state.backoffMs = RECONNECT_MS_MIN;
    conn.textContent = 'live';
    conn.className = 'pill pill-ok';
    conn.dataset.state = 'live';
  };
  ws.onmessage = (m) => {
    let msg;
    try { msg = JSON.parse(m.data); } catch { return; }
    if (msg.kind === 'hello') onHello(msg);
    else if (msg.kind === 'tick') onTick(msg);
    else if (msg.kind === 'event') onEvent(msg);
  };
  ws.onclose = () => {
    if (state.ws !== ws) return;
    conn.textContent = `reconnecting in ${(state.backoffMs / 1000).toFixed(1)} s…`;
    conn.className = 'pill pill-bad';
    conn.dataset.state = 'reconnecting';
    setTimeout(connect, state.backoffMs);
    state.backoffMs = Math.min(RECONNECT_MS_MAX, state.backoffMs * 2);
  };
}

function onHello(msg) {
  const prev = state.server;
  state.server = { pid: msg.pid, startedAt: msg.startedAt, node: msg.node };
  $('#node').textContent = `node ${msg.node} · pid ${msg.pid} · up since ${fmtTime(msg.startedAt)}`;
  $('#node').dataset.pid = String(msg.pid);
  const restarted = prev && (prev.pid !== msg.pid || prev.startedAt !== msg.startedAt);
  state.history = new Map(Object.entries(msg.history || {}));
  const names = new Set(msg.volumes.map((v) => v.name));
  for (const name of [...state.volumes.keys()]) if (!names.has(name)) { state.volumes.get(name).card.remove(); state.volumes.delete(name); }
  for (const v of msg.volumes) renderVolume(v);
  const tbody = $('#timeline tbody');
  if (restarted) {
    // Stamped with the new server's start: below (older than) what the new server did since.
    addTimelineRow({ time: msg.startedAt, volume: '', kind: 'server-restarted', data: { pid: msg.pid } });
    toast(`server restarted (pid ${msg.pid})`);
  }
  if (!prev || restarted) {
    if (!prev) tbody.textContent = '';
    for (const ev of msg.events || []) addTimelineRow(ev);
  }
  renderCluster(msg.volumes);
}

function onTick(msg) {
  for (const [name, s] of Object.entries(msg.samples || {})) {
    const h = state.history.get(name) || [];
    h.push(s);
    if (h.length > HISTORY_MAX) h.splice(0, h.length - HISTORY_MAX);
    state.history.set(name, h);
  }
  const names = new Set(msg.volumes.map((v) => v.name));
  for (const name of [...state.volumes.keys()]) if (!names.has(name)) { state.volumes.get(name).card.remove(); state.volumes.delete(name); }
  for (const v of msg.volumes) renderVolume(v);
  renderCluster(msg.volumes);
}

function onEvent(msg) {
  if (msg.event.kind === 'verify-progress' || msg.event.kind === 'verify-done') showVerify(msg.event);
  if (msg.event.kind === 'verify-progress') return; // progress, not a timeline row
  addTimelineRow(msg.event);
  if (msg.volume) renderVolume(msg.volume);
  const ui = state.volumes.get(msg.event.volume);
  if (ui && msg.event.kind === 'write-held') {
    ui.heldPeak = Math.max(ui.heldPeak || 0, msg.event.data.heldCount || 0);
    ui.heldPeakEl.textContent = `(peak ${ui.heldPeak})`;
  }
}

/** The volume card's verify line: progress while a verify runs, then its result. */
function showVerify(ev) {
  const ui = state.volumes.get(ev.volume);
  if (!ui) return;
  const d = ev.data || {};
  if (ev.kind === 'verify-progress') {
    const pct = d.totalBytes ? (100 * d.bytesDone) / d.totalBytes : 100;
    ui.verify.dataset.state = 'running';
    ui.verify.textContent = `verify${d.repair ? ' --repair' : ''}: ${pct.toFixed(1)}% (${d.regionsDone}/${d.regionCount} regions), ` +
      `${d.bytesPerSec == null ? '?' : `${fmtBytes(d.bytesPerSec)}/s`}, ETA ${d.etaSec == null ? '?' : `${d.etaSec} s`}, ${d.mismatches} mismatched so far`;
  } else {
    ui.verify.dataset.state = d.cancelled ? 'cancelled' : (d.mismatchedRegions || []).length > d.repaired ? 'mismatch' : 'clean';
    ui.verify.dataset.mismatches = d.mismatchRanges || '';
    ui.verify.textContent = verifySummary(d);
  }
}

function verifySummary(d) {
  const n = (d.mismatchedRegions || []).length;
  return `verify ${d.cancelled ? `cancelled (${d.cancelled})` : 'done'}: ${d.regionsChecked}/${d.regionCount} regions checked` +
    `${d.regionsSkipped ? `, ${d.regionsSkipped} skipped` : ''}; ${n ? `${n} mismatched: ${d.mismatchRanges}` : 'no mismatches'}` +
    `${d.repair ? `; ${d.repaired} repaired` : ''}`;
}

// ------------------------------------------------------------------ timeline

const SEVERITY = {
  'leg-failed': 'error', 'log-failed': 'error', 'repair-failed': 'error', 'resume-failed': 'error', 'verify-mismatch': 'warn',
  'write-held': 'warn', suspend: 'warn', 'repair-start': 'warn', 'repair-skipped': 'warn', 'server-restarted': 'warn',
  'repair-done': 'good', 'in-sync': 'good', resume: 'good', reload: 'info', membership: 'info',
};

function eventDetails(ev) {
  const d = ev.data || {};
  switch (ev.kind) {
    case 'leg-failed': return `leg ${d.legIndex} ${d.device}: ${HEALTH_TEXT[d.healthChar] || d.healthChar} (${d.kind}) ${d.message || ''}`;
    case 'write-held': return `write ${fmtBytes(d.lengthBytes)} at ${d.offsetBytes} held; ${d.heldCount} held`;
    case 'repair-start': return `${d.trigger}: ${d.policy}, removing ${(d.removed || []).join(', ') || '–'}${(d.added || []).length ? `, adding ${d.added.join(', ')}` : ''}`;
    case 'repair-done': return `removed ${(d.removed || []).join(', ') || '–'}; ${d.heldWritesReissued ?? 0} held writes completed; table ${d.table}`;
    case 'repair-failed': return `${d.step || ''} ${d.message || ''}`;
    case 'suspend': return `${d.noflush ? 'noflush, ' : ''}${d.heldWrites} held writes`;
    case 'resume': return d.swapped ? `new table (${d.how}), ${d.heldWritesReissued} held writes reissued` : `${d.heldWrites ?? 0} held writes`;
    case 'reload': return `inactive table: ${d.table}`;
    case 'in-sync': return `all ${d.regionCount} regions in sync`;
    case 'verify-start': return `${d.repair ? 'repair' : 'check'} of ${d.regionCount} regions`;
    case 'verify-done': return verifySummary(d);
    case 'verify-mismatch': return `region ${d.region}: legs ${(d.legIndexes || []).join(', ')} differ`;
    case 'membership': return `members ${(d.members || []).join(' ')}; log server ${d.server ?? '–'}`;
    case 'server-restarted': return `pid ${d.pid}`;
    default: return Object.entries(d).map(([k, v]) => `${k}=${typeof v === 'object' ? JSON.stringify(v) : v}`).join(' ');
  }
}

function addTimelineRow(ev) {
  const tbody = $('#timeline tbody');
  const row = el('tr', { class: `sev-${SEVERITY[ev.kind] || 'info'}`, 'data-kind': ev.kind, 'data-volume': ev.volume },
    el('td', {}, fmtTime(ev.time)), el('td', {}, ev.volume || '–'), el('td', {}, ev.kind), el('td', { class: 'mono' }, eventDetails(ev)));
  tbody.prepend(row); // newest first (hello replays oldest first)
  while (tbody.rows.length > EVENTS_SHOWN_MAX) tbody.lastElementChild.remove();
}

// ------------------------------------------------------------------ cluster

function renderCluster(volumes) {
  const body = $('#cluster-body');
  const clustered = volumes.filter((v) => v.cluster);
  if (clustered.length === 0) {
    body.textContent = 'single node (no cluster log)';
    body.className = 'muted';
    return;
  }
  body.className = '';
  body.textContent = '';
  for (const v of clustered) {
    const members = v.cluster.members.map((m) => `node ${m.nodeId} (pid ${m.pid})`).join(', ') || 'none yet';
    const server = v.cluster.server ? `node ${v.cluster.server.nodeId} (pid ${v.cluster.server.pid})` : 'none';
    body.append(el('div', {}, el('b', {}, v.name), `: ${v.cluster.members.length} members: ${members}; log server ${server}`));
  }
}

// ------------------------------------------------------------------ volumes

function renderVolume(v) {
  let ui = state.volumes.get(v.name);
  if (!ui) {
    ui = buildCard(v.name);
    state.volumes.set(v.name, ui);
    $('#volumes').append(ui.card);
  }
  ui.data = v;
  const m = v.mirror;
  ui.card.dataset.state = v.state;
  ui.card.dataset.target = v.target;
  ui.stateBadge.textContent = v.state;
  ui.stateBadge.className = `pill ${v.state === 'ACTIVE' ? 'pill-ok' : 'pill-wait'}`;
  ui.kind.textContent = `${v.target}${m ? `, ${v.legs.length} legs, ${m.log.type} log` : ''} · ${fmtBytes(v.sizeBytes)}`;
  ui.table.textContent = v.table;
  // legs (rebuilt only when they change, so a button is never replaced under the pointer)
  const legsKey = JSON.stringify([v.legs, !!m, !!token]);
  if (ui.legsKey !== legsKey) {
    ui.legsKey = legsKey;
    ui.legs.textContent = '';
    renderLegs(ui, v, m);
  }
  // sync
  const pct = m ? m.syncPercent : 100;
  ui.syncBar.style.width = `${pct}%`;
  ui.syncPct.textContent = `${pct >= 100 ? '100' : pct.toFixed(1)}%`;
  ui.syncPct.dataset.percent = String(pct);
  ui.syncRegions.textContent = m ? `${m.inSyncRegions} / ${m.regionCount} regions of ${fmtBytes(m.regionSizeBytes)}` : 'linear: no regions';
  ui.resyncRate.textContent = m ? (m.resync.running && pct < 100 ? fmtRate(m.resync.bytesPerSec) : 'idle') : '–';
  ui.resyncLimit.textContent = m ? (m.resync.rateBytesPerSec > 0 ? fmtRate(m.resync.rateBytesPerSec) : 'unlimited') : '–';
  ui.eta.textContent = m && pct < 100 ? fmtEta(m.resync.etaSec) : '–';
  ui.held.textContent = String(v.heldWrites);
  ui.held.dataset.held = String(v.heldWrites);
  ui.held.className = v.heldWrites > 0 ? 'held held-on' : 'held';
  ui.heldPeakEl.textContent = ui.heldPeak ? `(peak ${ui.heldPeak})` : '';
  ui.queued.textContent = `${v.queuedRequests} queued, ${v.inFlightRequests} in flight`;
  ui.log.textContent = m ? `${m.log.type}, health ${m.log.health}, ${m.logFlushes} flushes` : '–';
  for (const b of ui.mirrorOnly) b.disabled = !token || !m;
  ui.mapWrap.style.display = m ? '' : 'none';
  drawSparks(ui, state.history.get(v.name) || []);
}

function renderLegs(ui, v, m) {
  v.legs.forEach((l, i) => {
    const failed = l.health !== 'A';
    const rm = el('button', { class: 'danger', 'data-action': 'remove-leg', disabled: !token || !m || v.legs.length < 2 ? true : undefined,
      onclick: () => act(v.name, 'remove-leg', { device: l.device }, `Remove leg ${l.device} from "${v.name}"? The volume is reloaded without it.`) }, 'remove');
    ui.legs.append(el('tr', { 'data-leg': String(i), 'data-health': l.health },
      el('td', {}, String(i)), el('td', { class: 'mono' }, l.device),
      el('td', {}, el('span', { class: `health health-${l.health}`, title: HEALTH_TEXT[l.health] || '' }, l.health), ' ', failed ? HEALTH_TEXT[l.health] || '' : ''),
      el('td', {}, l.upToDate ? 'yes' : 'stale'), el('td', {}, l.isDefault ? 'primary' : ''), el('td', {}, rm)));
  });
}

function buildCard(name) {
  const ui = { name, heldPeak: 0, mirrorOnly: [] };
  ui.stateBadge = el('span', { class: 'pill' });
  ui.kind = el('span', { class: 'muted' });
  ui.table = el('div', { class: 'table-line mono' });
  ui.legs = el('tbody');
  ui.syncBar = el('div');
  ui.syncPct = el('b', { class: 'sync-pct' });
  ui.syncRegions = el('span', { class: 'muted' });
  ui.resyncRate = el('dd', { class: 'resync-rate' });
  ui.resyncLimit = el('dd', { class: 'resync-limit' });
  ui.eta = el('dd', { class: 'eta' });
  ui.held = el('span', { class: 'held' });
  ui.heldPeakEl = el('span', { class: 'held-peak muted' });
  ui.queued = el('dd', {});
  ui.log = el('dd', {});
  const rateInput = el('input', { type: 'text', placeholder: 'e.g. 10M or 0', 'aria-label': 'resync rate (bytes/s)' });
  const btn = (label, action, opts = {}) => {
    const b = el('button', { 'data-action': action, class: opts.danger ? 'danger' : '', onclick: opts.onclick || (() => act(name, action, {}, opts.confirm)) }, label);
    ui.mirrorOnly.push(b);
    return b;
  };
  const actions = el('div', { class: 'actions' },
    rateInput,
    btn('Set resync rate', 'resync-rate', { onclick: () => {
      const n = parseRate(rateInput.value);
      if (n === null) { toast('resync rate: a number of bytes/s, with K, M or G (0 = unlimited)', true); return; }
      act(name, 'resync-rate', { bytesPerSec: n });
    } }),
    btn('Verify', 'verify'),
    btn('Repair', 'repair'),
    el('button', { 'data-action': 'reload', class: 'danger', disabled: !token ? true : undefined, onclick: () => reload(name) }, 'Reload table…'),
    el('button', { 'data-action': 'resume', disabled: !token ? true : undefined, onclick: () => act(name, 'resume', {}) }, 'Resume'));
  ui.canvas = el('canvas', { class: 'regions', width: 1024, height: 16 });
  ui.mapInfo = el('span', { class: 'muted small' });
  ui.mapWrap = el('div', { class: 'map-wrap' },
    el('h3', {}, 'Region map ', ui.mapInfo), ui.canvas,
    el('div', { class: 'legend' }, ...REGION_NAMES.map((n, i) => el('span', {}, el('i', { style: `background:${cssColor(REGION_COLORS[i])}` }), n))));
  ui.sparks = el('div', { class: 'sparks' });
  ui.sparkEls = {};
  for (const [key, label] of [['tput', 'throughput (read / write)'], ['iops', 'requests/s'], ['lat', 'latency (mean / p99)'], ['resync', 'resync rate']]) {
    const value = el('span', { class: 'value' });
    const c = el('canvas', { width: 300, height: 40 });
    ui.sparkEls[key] = { value, canvas: c };
    ui.sparks.append(el('div', { class: 'spark', 'data-spark': key }, el('div', { class: 'label' }, el('span', {}, label), value), c));
  }
  ui.card = el('section', { class: 'panel volume', 'data-volume': name },
    el('div', { class: 'vol-head' }, el('h2', {}, name), ui.stateBadge, ui.kind),
    ui.table,
    el('div', { class: 'grid' },
      el('div', {},
        el('h3', {}, 'Legs'),
        el('table', { class: 'legs' }, el('thead', {}, el('tr', {}, ...['#', 'device', 'health', 'up to date', '', ''].map((h) => el('th', {}, h)))), ui.legs),
        el('h3', {}, 'Sync'),
        el('div', { style: 'display:flex;gap:10px;align-items:center' }, el('div', { class: 'bar', style: 'flex:1' }, ui.syncBar), ui.syncPct),
        ui.syncRegions,
        el('dl', { class: 'kv' },
          el('dt', {}, 'resync rate'), ui.resyncRate,
          el('dt', {}, 'rate limit'), ui.resyncLimit,
          el('dt', {}, 'ETA'), ui.eta,
          el('dt', {}, 'held writes'), el('dd', {}, ui.held, ' ', ui.heldPeakEl),
          el('dt', {}, 'requests'), ui.queued,
          el('dt', {}, 'log'), ui.log),
        actions,
        ui.verify = el('div', { class: 'verify-result muted small', 'data-state': 'idle' }, '')),
      el('div', {}, ui.mapWrap, el('h3', {}, 'Last minutes'), ui.sparks)));
  const tip = $('#tip') || document.body.appendChild(el('div', { id: 'tip' }));
  ui.canvas.addEventListener('mousemove', (e) => regionTip(ui, e, tip));
  ui.canvas.addEventListener('mouseleave', () => { tip.style.display = 'none'; });
  return ui;
}

function parseRate(text) {
  const m = /^\s*([0-9]+(?:\.[0-9]+)?)\s*([kmg]?)(?:i?b)?(?:\/s)?\s*$/i.exec(text);
  if (!m) return null;
  const mult = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3 }[m[2].toLowerCase()];
  return Math.round(Number(m[1]) * mult);
}

function reload(name) {
  const ui = state.volumes.get(name);
  const table = prompt(`New table for "${name}" (loaded, then swapped in with suspend --noflush + resume):`, ui.data.table);
  if (table === null || table.trim() === '' || table.trim() === ui.data.table) return;
  act(name, 'reload', { table: table.trim() }, `Reload "${name}" with\n${table.trim()}\n?`);
}

async function act(name, action, body, confirmText) {
  if (!token) { toast('read-only: open the URL serve printed (with #token=...) to act', true); return; }
  if (confirmText && !confirm(confirmText)) return;
  try {
    const r = await fetch(`/api/volumes/${encodeURIComponent(name)}/${action}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
      body: JSON.stringify(body),
    });
    const j = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(j.error ? `${j.error.code}: ${j.error.message}` : `HTTP ${r.status}`);
    if (action === 'verify') toast(`${name}: ${verifySummary(j)}`, (j.mismatchedRegions || []).length > j.repaired || !!j.cancelled);
    else toast(`${name}: ${action} done${j.reason ? ` (${j.reason})` : ''}`);
  } catch (e) {
    toast(`${name}: ${action} failed: ${e.message}`, true);
  }
}

// ------------------------------------------------------------------ region map

function cssColor(abgr) {
  return `rgb(${abgr & 255},${(abgr >> 8) & 255},${(abgr >> 16) & 255})`;
}

async function pollRegions() {
  if (document.visibilityState === 'visible') {
    for (const ui of state.volumes.values()) {
      if (!ui.data || !ui.data.mirror || state.regionBusy.has(ui.name)) continue;
      state.regionBusy.add(ui.name);
      fetchRegions(ui).finally(() => state.regionBusy.delete(ui.name));
    }
  }
  setTimeout(pollRegions, REGION_POLL_MS);
}

async function fetchRegions(ui) {
  try {
    const r = await fetch(`/api/volumes/${encodeURIComponent(ui.name)}/regions`, { cache: 'no-store' });
    if (!r.ok) return;
    const count = Number(r.headers.get('x-region-count'));
    const sizeBytes = Number(r.headers.get('x-region-size-bytes'));
    const bits = new Uint8Array(await r.arrayBuffer());
    ui.map = { count, sizeBytes, bits };
    drawRegions(ui);
  } catch {
    // the live connection reports the outage
  }
}

/** Lay out `count` regions on the canvas: square cells when few, several regions per pixel when many. */
function layout(count, w) {
  const perPx = Math.max(1, Math.ceil(count / (w * MAP_HEIGHT_PX_MAX)));
  const cells = Math.ceil(count / perPx);
  const cell = perPx > 1 ? 1 : Math.max(1, Math.min(16, Math.floor(Math.sqrt((w * MAP_HEIGHT_PX_MAX) / cells))));
  const cols = Math.floor(w / cell);
  const rows = Math.ceil(cells / cols);
  return { perPx, cell, cols, rows, height: Math.max(1, rows * cell) };
}

function drawRegions(ui) {
  const { count, bits } = ui.map;
  const c = ui.canvas;
  // One canvas pixel per device pixel, so cells stay crisp (no scaling moire).
  const w = Math.max(MAP_WIDTH_PX_MIN, Math.min(MAP_WIDTH_PX_MAX, Math.round((c.clientWidth || 1024) * (window.devicePixelRatio || 1))));
  const L = layout(count, w);
  ui.layout = L;
  if (c.width !== w) c.width = w;
  if (c.height !== L.height) c.height = L.height;
  const ctx = c.getContext('2d');
  const img = ctx.createImageData(c.width, c.height);
  const px = new Uint32Array(img.data.buffer);
  px.fill(0xff16100b);
  const counts = [0, 0, 0, 0];
  let cellIndex = 0;
  for (let r = 0; r < count; r += L.perPx, cellIndex++) {
    let worst = 0;
    const end = Math.min(count, r + L.perPx);
    for (let i = r; i < end; i++) {
      const code = (bits[i >> 2] >> ((i & 3) * 2)) & 3;
      counts[code]++;
      if (REGION_RANK[code] > REGION_RANK[worst]) worst = code;
    }
    const color = REGION_COLORS[worst];
    const x0 = (cellIndex % L.cols) * L.cell;
    const y0 = Math.floor(cellIndex / L.cols) * L.cell;
    const inner = L.cell > 3 ? L.cell - 1 : L.cell; // a 1 px gap when cells are big enough to see
    for (let y = 0; y < inner; y++) {
      const row = (y0 + y) * c.width + x0;
      for (let x = 0; x < inner; x++) px[row + x] = color;
    }
  }
  ctx.putImageData(img, 0, 0);
  ui.mapInfo.textContent = `${count.toLocaleString()} regions${L.perPx > 1 ? `, ${L.perPx} per pixel (worst shown)` : ''} · ` +
    REGION_NAMES.map((n, i) => `${counts[i].toLocaleString()} ${n}`).join(', ');
  ui.canvas.dataset.counts = counts.join(',');
}

function regionTip(ui, e, tip) {
  if (!ui.map || !ui.layout) return;
  const rect = ui.canvas.getBoundingClientRect();
  const x = Math.floor(((e.clientX - rect.left) / rect.width) * ui.canvas.width);
  const y = Math.floor(((e.clientY - rect.top) / rect.height) * ui.canvas.height);
  const L = ui.layout;
  const cellIndex = Math.floor(y / L.cell) * L.cols + Math.floor(x / L.cell);
  const first = cellIndex * L.perPx;
  if (first >= ui.map.count) { tip.style.display = 'none'; return; }
  const code = (ui.map.bits[first >> 2] >> ((first & 3) * 2)) & 3;
  const last = Math.min(ui.map.count, first + L.perPx) - 1;
  tip.textContent = L.perPx > 1 ? `regions ${first}–${last} (bytes ${fmtBytes(first * ui.map.sizeBytes)}…)` : `region ${first} @ ${fmtBytes(first * ui.map.sizeBytes)}: ${REGION_NAMES[code]}`;
  tip.style.left = `${e.clientX + 12}px`;
  tip.style.top = `${e.clientY + 12}px`;
  tip.style.display = 'block';
}

// ------------------------------------------------------------------ sparklines

function drawSparks(ui, h) {
  const last = h[h.length - 1] || {};
  const s = ui.sparkEls;
  s.tput.value.textContent = `${fmtRate(last.readBytesPerSec || 0)} / ${fmtRate(last.writeBytesPerSec || 0)}`;
  spark(s.tput.canvas, [h.map((x) => x.readBytesPerSec), h.map((x) => x.writeBytesPerSec)], ['#58a6ff', '#3fb950']);
  s.iops.value.textContent = `${Math.round(last.opsPerSec || 0)}`;
  spark(s.iops.canvas, [h.map((x) => x.opsPerSec)], ['#a371f7']);
  s.lat.value.textContent = `${fmtMs(last.latencyMeanMs)} / ${fmtMs(last.latencyP99Ms)}`;
  spark(s.lat.canvas, [h.map((x) => x.latencyMeanMs ?? 0), h.map((x) => (isFinite(x.latencyP99Ms) ? x.latencyP99Ms ?? 0 : 10000))], ['#d29922', '#f85149']);
  s.resync.value.textContent = fmtRate(last.resyncBytesPerSec || 0);
  spark(s.resync.canvas, [h.map((x) => x.resyncBytesPerSec)], ['#58a6ff']);
}

function spark(canvas, series, colors) {
  const ctx = canvas.getContext('2d');
  const w = canvas.width, hgt = canvas.height;
  ctx.clearRect(0, 0, w, hgt);
  let max = 0;
  for (const s of series) for (const v of s) if (v > max) max = v;
  if (max <= 0) max = 1;
  series.forEach((s, k) => {
    if (s.length < 2) return;
    ctx.beginPath();
    ctx.strokeStyle = colors[k];
    ctx.lineWidth = 1.5;
    const n = HISTORY_MAX;
    s.forEach((v, i) => {
      const x = w - ((s.length - 1 - i) / (n - 1)) * w;
      const y = hgt - 2 - (v / max) * (hgt - 4);
      if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    });
    ctx.stroke();
  });
}

// ------------------------------------------------------------------ start

$('#mode').textContent = token ? 'actions enabled' : 'read-only';
$('#mode').className = `pill ${token ? 'pill-info' : 'pill-wait'}`;
connect();
pollRegions();
