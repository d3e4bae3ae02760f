// The dashboard in a real browser (Debian's chromium via playwright-core) against the real CLI server:
// a 2-leg mirror whose second leg is nbdkit's error filter over a unix socket (handle_errors,
// --repair-policy remove). We write through a real NBD client, arm the fault, and check what the operator
// sees: the leg failing, the write held, the repair, then (after a reload from the page, confirmed in its
// dialogs) a new leg resynced to 100%; then the server restarts and the page reconnects by itself.
// Screenshots go to a kept temp directory whose path is printed.
import { join } from 'node:path';
import type { Browser, Page } from 'playwright-core';
import { afterAll, describe, expect, it, onTestFinished } from 'vitest';
import { NbdClient } from '../../src/nbd/client/client.js';
import { useTempDir } from '../helpers/e2e.js';
import { startServer, type ServerHandle } from '../helpers/server.js';
import { createSparseFile, MiB, sectorsOf } from '../helpers/tmp.js';
import { requireTools } from '../helpers/tools.js';
import { startNbdkitErrorLeg, type NbdkitLeg } from '../control/nbdkit-leg.js';
import { artifactsDir, dashboardUrlOf, freePort, launchChromium, requireChromium } from './dashboard-helpers.js';

const SIZE = 16 * MiB;
const SECTORS = sectorsOf(SIZE);
/** 32 KiB regions: 512 of them, big enough cells to see on the map. */
const REGION_SECTORS = 64;
const UI_TIMEOUT_MS = 20_000;

const dir = useTempDir('dashboard');
const ok = requireTools('nbdkit') && requireChromium();

let browser: Browser | undefined;
const nbdkits: NbdkitLeg[] = [];
afterAll(async () => {
  await browser?.close();
  for (const n of nbdkits.splice(0)) await n.stop();
});

const card = (page: Page, name: string) => page.locator(`section.volume[data-volume="${name}"]`);
const timelineKinds = (page: Page) => page.$$eval('#timeline tbody tr', (rows) => rows.map((r) => (r as HTMLElement).dataset.kind ?? ''));

async function shot(page: Page, outDir: string, name: string): Promise<string> {
  const path = join(outDir, `${name}.png`);
  await page.screenshot({ path, fullPage: true });
  console.log(`screenshot ${path}`);
  return path;
}

describe.skipIf(!ok)('dashboard in chromium', () => {
  it('shows a leg failing, held writes, the repair, a resync to 100%, and reconnects after a restart', async () => {
    const d = dir();
    const artifacts = await artifactsDir('dashboard');
    const out = artifacts.dir;
    let passed = false;
    onTestFinished(() => artifacts.done(passed));
    const legA = await createSparseFile(join(d, 'a.img'), SIZE);
    const legC = await createSparseFile(join(d, 'c.img'), SIZE);
    const bad = await startNbdkitErrorLeg(d, 'b', SIZE);
    nbdkits.push(bad);
    const port = await freePort();
    const table = `0 ${SECTORS} mirror core 1 ${REGION_SECTORS} 2 ${legA} 0 ${bad.uri} 0 1 handle_errors`;
    const serverArgs = { dir: d, extraArgs: ['--repair-policy', 'remove', '--dashboard', String(port)] };
    let server: ServerHandle = await startServer({ ...serverArgs, tables: [{ table, name: 'vol' }] });
    const url = await dashboardUrlOf(server);
    expect(url).toMatch(new RegExp(`^http://127\\.0\\.0\\.1:${port}/#token=`));

    browser = await launchChromium();
    const page = await browser.newPage({ viewport: { width: 1400, height: 1100 } });
    const pageErrors: string[] = [];
    page.on('pageerror', (e) => pageErrors.push(e.message));
    // Dangerous actions ask first: accept the prompt with the new table, then the confirmation.
    let promptAnswer = '';
    const dialogs: string[] = [];
    page.on('dialog', (dlg) => {
      dialogs.push(`${dlg.type()}: ${dlg.message()}`);
      void (dlg.type() === 'prompt' ? dlg.accept(promptAnswer) : dlg.accept());
    });
    await page.goto(url);
    const vol = card(page, 'vol');
    await expect.poll(() => page.locator('#conn').getAttribute('data-state'), { timeout: UI_TIMEOUT_MS }).toBe('live');
    await expect.poll(() => page.locator('#mode').textContent()).toBe('actions enabled');
    // The token is taken out of the address bar.
    expect(page.url()).not.toContain('token=');
    await expect.poll(() => vol.locator('tr[data-leg]').count(), { timeout: UI_TIMEOUT_MS }).toBe(2);
    await expect.poll(() => vol.locator('.sync-pct').getAttribute('data-percent'), { timeout: UI_TIMEOUT_MS }).toBe('100');
    await expect.poll(() => page.locator('#cluster-body').textContent()).toContain('single node');
    // The region map is drawn from the binary map: 512 regions counted by state.
    await expect.poll(async () => (await vol.locator('canvas.regions').getAttribute('data-counts')) ?? '', { timeout: UI_TIMEOUT_MS }).toMatch(/^\d+,\d+,\d+,\d+$/);
    const counts = ((await vol.locator('canvas.regions').getAttribute('data-counts')) ?? '').split(',').map(Number);
    expect(counts.reduce((a, b) => a + b, 0)).toBe(SIZE / (REGION_SECTORS * 512));

    // A safe action through the same API as the CLI: the resync rate limit.
    await vol.locator('input[aria-label="resync rate (bytes/s)"]').fill('2M');
    await vol.locator('button[data-action="resync-rate"]').click();
    await expect.poll(() => vol.locator('dd.resync-limit').textContent(), { timeout: UI_TIMEOUT_MS }).toBe('2.0 MiB/s');

    // Writes through a real client: the throughput sparkline moves.
    const client = await NbdClient.connect(server.uri('vol'));
    const data = Buffer.alloc(1 * MiB, 0x5a);
    for (let i = 0; i < 4; i++) await client.write(data, i * MiB, { fua: false });
    await expect
      .poll(async () => (await vol.locator('[data-spark="tput"] .value').textContent()) ?? '', { timeout: UI_TIMEOUT_MS })
      .toMatch(/\/ [1-9][0-9.]* (KiB|MiB)\/s/);
    await shot(page, out, '1-healthy-after-writes');

    // Fault: leg b returns EIO. The write is held (handle_errors), the policy removes the leg, the write completes.
    await bad.arm();
    await client.write(Buffer.alloc(64 * 1024, 0x6b), 5 * MiB, { fua: false });
    await expect.poll(() => timelineKinds(page), { timeout: UI_TIMEOUT_MS }).toEqual(expect.arrayContaining(['leg-failed', 'write-held', 'repair-start', 'repair-done']));
    const failedRow = page.locator('#timeline tr[data-kind="leg-failed"]').first();
    expect(await failedRow.textContent()).toContain('write failed');
    expect(await failedRow.textContent()).toContain(bad.socket);
    expect(await page.locator('#timeline tr[data-kind="write-held"]').first().textContent()).toMatch(/[1-9][0-9]* held/);
    await expect.poll(() => vol.locator('.held-peak').textContent(), { timeout: UI_TIMEOUT_MS }).toMatch(/peak [1-9]/);
    // After the repair: linear on the good leg, nothing held.
    await expect.poll(() => vol.getAttribute('data-target'), { timeout: UI_TIMEOUT_MS }).toBe('linear');
    expect(await vol.locator('.held').getAttribute('data-held')).toBe('0');
    expect(await page.locator('#timeline tr[data-kind="repair-done"]').first().textContent()).toMatch(/[1-9][0-9]* held writes completed/);
    await shot(page, out, '2-leg-failed-held-repaired');

    // Reload from the page (dangerous: prompt + confirm) to a new 2-leg mirror; its new leg resyncs to 100%.
    const newTable = `0 ${SECTORS} mirror core 1 ${REGION_SECTORS} 2 ${legA} 0 ${legC} 0 1 handle_errors`;
    promptAnswer = newTable;
    await vol.locator('button[data-action="reload"]').click();
    await expect.poll(() => vol.getAttribute('data-target'), { timeout: UI_TIMEOUT_MS }).toBe('mirror');
    expect(dialogs.some((t) => t.startsWith('prompt:'))).toBe(true);
    expect(dialogs.some((t) => t.startsWith('confirm:') && t.includes(newTable))).toBe(true);
    await expect.poll(() => vol.locator('.sync-pct').getAttribute('data-percent'), { timeout: UI_TIMEOUT_MS }).toBe('100');
    await expect.poll(() => vol.locator('tr[data-leg]').count()).toBe(2);
    expect(await vol.locator('tr[data-leg] .health').allTextContents()).toEqual(['A', 'A']);
    await expect.poll(() => timelineKinds(page), { timeout: UI_TIMEOUT_MS }).toEqual(expect.arrayContaining(['reload', 'resume', 'in-sync']));
    // The resync sparkline saw bytes copied (16 MiB from leg a to leg c) in the next 1 s sample.
    const resyncSeen = () =>
      page.evaluate(async () => {
        const state = (await (await fetch('/api/state')).json()) as { history: Record<string, { resyncBytesPerSec: number }[]> };
        return (state.history.vol ?? []).some((s) => s.resyncBytesPerSec > 0);
      });
    await expect.poll(resyncSeen, { timeout: UI_TIMEOUT_MS }).toBe(true);
    await shot(page, out, '3-reloaded-resynced');
    await client.close();

    // Restart the server: the page says it lost the connection, then reconnects by itself to the new one.
    const oldPid = server.pid;
    await server.stop();
    await expect.poll(() => page.locator('#conn').getAttribute('data-state'), { timeout: UI_TIMEOUT_MS }).toBe('reconnecting');
    await shot(page, out, '4-server-down');
    server = await startServer({ ...serverArgs, tables: [{ table: newTable, name: 'vol' }] });
    await expect.poll(() => page.locator('#conn').getAttribute('data-state'), { timeout: UI_TIMEOUT_MS }).toBe('live');
    await expect.poll(() => page.locator('#node').getAttribute('data-pid'), { timeout: UI_TIMEOUT_MS }).toBe(String(server.pid));
    expect(server.pid).not.toBe(oldPid);
    await expect.poll(() => timelineKinds(page), { timeout: UI_TIMEOUT_MS }).toContain('server-restarted');
    await expect.poll(() => vol.locator('.sync-pct').getAttribute('data-percent'), { timeout: UI_TIMEOUT_MS }).toBe('100');
    await shot(page, out, '5-reconnected');

    // Without the token the page is read-only: actions are disabled and the API refuses them.
    const ro = await browser.newPage();
    await ro.goto(url.replace(/#token=.*$/, ''));
    await expect.poll(() => ro.locator('#mode').textContent(), { timeout: UI_TIMEOUT_MS }).toBe('read-only');
    await expect.poll(() => card(ro, 'vol').locator('button[data-action="repair"]').isDisabled(), { timeout: UI_TIMEOUT_MS }).toBe(true);
    const refused = await ro.evaluate(async () => (await fetch('/api/volumes/vol/repair', { method: 'POST', body: '{}' })).status);
    expect(refused).toBe(401);
    await ro.close();

    expect(pageErrors).toEqual([]);
    await server.stop();
    passed = true;
  });
});
