// cpg-load.test.ts — loading the corosync addon: a missing addon gives CpgUnavailableError that says how
// to install and build it; a present addon without a reachable corosync gives a CpgError, not a crash.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { ADDON_PATH_ENV, BUILD_NATIVE_COMMAND, CpgTransport, CpgUnavailableError, cpgAvailable, loadCpgAddon } from '../../src/cluster/cpg.js';
import { ADDON } from './harness.js';

describe('cpg addon loading', () => {
  it('a missing addon throws CpgUnavailableError naming the packages and the build command', () => {
    const saved = process.env[ADDON_PATH_ENV];
    process.env[ADDON_PATH_ENV] = '/nonexistent/nbdm_cpg.node';
    try {
      expect(() => loadCpgAddon()).toThrow(CpgUnavailableError);
      expect(() => new CpgTransport()).toThrow(/libcpg-dev.*build-native\.sh/s);
      expect(cpgAvailable()).toBe(false);
      expect(BUILD_NATIVE_COMMAND).toBe('bash scripts/build-native.sh');
    } finally {
      if (saved === undefined) delete process.env[ADDON_PATH_ENV];
      else process.env[ADDON_PATH_ENV] = saved;
    }
  });

  it.skipIf(!existsSync(ADDON) || process.getuid?.() !== 0)(
    'without a corosync in reach, opening a transport fails with a CpgError (no crash)',
    () => {
      // A fresh network namespace has no corosync (its IPC sockets are per namespace).
      const script = `
        const a = require(${JSON.stringify(ADDON)});
        try { new a.Cpg(() => {}); console.log('opened'); }
        catch (e) { console.log(e.code + ' ' + e.csError); }`;
      const r = spawnSync('unshare', ['--net', process.execPath, '-e', script], { encoding: 'utf8', timeout: 20_000 });
      expect(r.status).toBe(0);
      expect(r.stdout.trim()).toMatch(/^CS_ERR_\w+ \d+$/);
    },
  );
});
