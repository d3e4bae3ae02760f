// Helpers for the dashboard tests: a free 127.0.0.1 port, the dashboard URL a server printed, Debian's
// chromium driven by playwright-core, and a directory for screenshots that outlives the test (its path is
// printed so a person can look at them).
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium, type Browser } from 'playwright-core';
import { unmet } from '../helpers/tools.js';
import { waitFor } from '../control/control-helpers.js';
import type { ServerHandle } from '../helpers/server.js';

export const CHROMIUM_PATH = '/usr/bin/chromium';
export const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
];

/** chromium must exist (apt-get install chromium; scripts/install-deps.sh): fails under CI, skips locally. */
export function requireChromium(): boolean {
  return existsSync(CHROMIUM_PATH) || unmet(`browser ${CHROMIUM_PATH}`, 'apt-get install chromium');
}

export function launchChromium(): Promise<Browser> {
  return chromium.launch({ executablePath: CHROMIUM_PATH, args: CHROMIUM_ARGS, timeout: 60_000 });
}

/** A port free on 127.0.0.1 right now (the kernel's pick). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const a = s.address();
      const port = typeof a === 'object' && a !== null ? a.port : 0;
      s.close(() => resolve(port));
    });
  });
}

/** The `dashboard http://127.0.0.1:PORT/#token=...` line serve prints first. */
export async function dashboardUrlOf(server: ServerHandle): Promise<string> {
  return waitFor('the dashboard URL on stdout', async () => /dashboard (http:\/\/127\.0\.0\.1:[0-9]+\/#token=[0-9a-f]+)/.exec(server.output())?.[1], 15_000);
}

/**
 * Where screenshots go: NBDM_SCREENSHOTS_DIR when set (kept), else a temp dir that `done(passed)` removes
 * when the test passed and keeps (printed) when it failed.
 */
export async function artifactsDir(name: string): Promise<{ dir: string; done(passed: boolean): Promise<void> }> {
  const wanted = process.env.NBDM_SCREENSHOTS_DIR;
  if (wanted) {
    await mkdir(wanted, { recursive: true });
    console.log(`dashboard screenshots: ${wanted}`);
    return { dir: wanted, done: async () => undefined };
  }
  const dir = await mkdtemp(join(tmpdir(), `nbd-mirror-${name}-artifacts-`));
  return {
    dir,
    async done(passed: boolean) {
      if (passed) await rm(dir, { recursive: true, force: true });
      else console.log(`dashboard screenshots of the failed run: ${dir}`);
    },
  };
}
