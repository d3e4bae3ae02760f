// serve-cluster-errors.test.ts — `nbd-mirror serve` with a cluster table where corosync support is missing
// fails at startup with a message saying what to install; the same legs as a single-node (core log) table
// still serve. Needs no root and no corosync.
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { useTempDir } from '../helpers/e2e.js';
import { NbdClient } from '../../src/nbd/client/client.js';
import { run } from '../helpers/run.js';
import { CLI_PATH, startServer, stopAllServers } from '../helpers/server.js';

const dir = useTempDir('serve-cluster-errors');

describe('serve: cluster tables without corosync', () => {
  afterAll(async () => {
    await stopAllServers();
  });

  it('a cluster table fails with install instructions when the addon is missing; a core-log table serves', async () => {
    const legs = ['a', 'b'].map((n) => join(dir(), `${n}.img`));
    for (const l of legs) await run('truncate', ['-s', '1M', l]);
    const r = await run(
      process.execPath,
      [CLI_PATH, 'serve', '--listen', `unix:${join(dir(), 's.sock')}`, '--control', join(dir(), 's.ctl'), '--dashboard', '0', '--table', `0 2048 mirror userspace 4 LVM-x clustered-core 256 nosync 2 ${legs[0]} 0 ${legs[1]} 0`],
      { allowFailure: true, env: { ...process.env, NBD_MIRROR_CPG_ADDON: join(dir(), 'no-such-addon.node') } },
    );
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain("cluster log 'LVM-x' needs corosync");
    expect(r.stderr).toContain('apt-get install corosync');
    const server = await startServer({ dir: dir(), label: 'single', tables: [{ table: `0 2048 mirror core 2 256 nosync 2 ${legs[0]} 0 ${legs[1]} 0`, name: 'volume' }] });
    const c = await NbdClient.connect(server.uri('volume'));
    expect(c.sizeBytes).toBe(1024 * 1024);
    await c.close();
    await server.stop();
  });
});
