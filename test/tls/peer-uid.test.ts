// uid: allow rules over unix sockets, through the optional SO_PEERCRED addon (native/peercred). The test
// builds the addon when it is missing (node-gyp, Node's headers); if that is impossible it fails under
// CI=true and skips loudly otherwise, like a missing tool.
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NbdClient } from '../../src/nbd/client/client.js';
import { peerCredAvailable } from '../../src/nbd/server/peer-cred.js';
import { REPO_ROOT } from '../helpers/server.js';
import { unmet } from '../helpers/tools.js';
import { MiB, startTlsHarness, type TlsHarness } from './harness.js';

function ensureAddon(): boolean {
  const built = join(REPO_ROOT, 'native', 'peercred', 'build', 'Release', 'nbdm_peercred.node');
  if (!existsSync(built)) {
    try {
      execFileSync(join(REPO_ROOT, 'node_modules', '.bin', 'node-gyp'), ['rebuild', '--loglevel=warn', `--directory=${join(REPO_ROOT, 'native', 'peercred')}`, '--nodedir=/usr'], {
        stdio: 'ignore',
        timeout: 120_000,
      });
    } catch {
      // reported below
    }
  }
  return peerCredAvailable() || unmet('the SO_PEERCRED addon native/peercred', 'node-gyp rebuild --directory=native/peercred --nodedir=/usr');
}

const ok = ensureAddon();
const uid = process.getuid?.() ?? 0;

describe.skipIf(!ok)('uid: allow rules on unix sockets', () => {
  let h: TlsHarness;
  beforeAll(async () => {
    h = await startTlsHarness({ mine: { sizeBytes: 1 * MiB }, theirs: { sizeBytes: 1 * MiB } }, { allow: [`mine=uid:${uid}`, `theirs=uid:${uid + 4242}`] });
  });
  afterAll(async () => h?.close());

  it('admits our uid, refuses another export with POLICY and a log line naming the uid', async () => {
    const c = await NbdClient.connect(`nbd+unix:///mine?socket=${h.socketPath}`);
    await c.close();
    await expect(NbdClient.connect(`nbd+unix:///theirs?socket=${h.socketPath}`)).rejects.toThrow(/refused \(0x80000002\)/);
    const line = h.log.find(/export refused by policy/)[0]!;
    expect(String(line.fields['peer'])).toBe(`unix uid ${uid}, no TLS`);
    expect(String(line.fields['reason'])).toMatch(new RegExp(`matches none of uid:${uid + 4242}`));
    expect(h.exports.get('theirs')!.calls.read).toBe(0);
  });
});
