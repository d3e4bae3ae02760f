// `serve` with the idle poll on (the default) and off (--poll-max-us 0), through the real CLI on a 2-leg
// core-log mirror (nosync) of files: its page-cached legs answer at once, the path the poll is for. fio
// QD1 write+verify, then qemu-io pattern reads of what it did not touch, and after a clean stop the legs
// are identical. (Whether the spin caught anything is checked in idle-poll.test.ts, in process.)
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { useTempDir } from '../helpers/e2e.js';
import { runFioVerify } from '../helpers/fio.js';
import { run } from '../helpers/run.js';
import { startServer, stopAllServers } from '../helpers/server.js';
import { makeMirrorFiles, mirrorTable } from '../helpers/tables.js';
import { MiB } from '../helpers/tmp.js';
import { requireTools } from '../helpers/tools.js';

const ok = requireTools('fio', 'qemu-io', 'cmp');
const dir = useTempDir('idle-poll-cli');
const SIZE = 8 * MiB;

afterEach(async () => stopAllServers());

describe.skipIf(!ok)('serve --poll-max-us', () => {
  for (const [label, args] of [
    ['default (on)', []],
    ['0 (off)', ['--poll-max-us', '0']],
  ] as const) {
    it(`${label}: QD1 fio verify and qemu-io patterns on a mirror, legs identical`, async () => {
      const d = join(dir(), label.replace(/\W+/g, '-'));
      await mkdir(d);
      const files = await makeMirrorFiles(d, 2, SIZE);
      const table = mirrorTable({ legs: files.legs, sizeBytes: SIZE, sync: 'nosync' });
      const server = await startServer({ dir: d, tables: [{ table }], extraArgs: [...args] });
      const fio = await runFioVerify({ uri: server.uri(), dir: d, numJobs: 1, sliceBytes: 2 * MiB, iodepth: 1, bs: '4k' });
      expect(fio.errors).toBe(0);
      expect(fio.readBytes).toBe(2 * MiB);
      const cmds: string[] = [];
      for (let i = 0; i < 64; i++) cmds.push('-c', `write -P ${i + 1} ${4 * MiB + i * 4096} 4k`);
      for (let i = 0; i < 64; i++) cmds.push('-c', `read -P ${i + 1} ${4 * MiB + i * 4096} 4k`);
      const q = await run('qemu-io', ['-f', 'raw', ...cmds, server.uri()]);
      expect(q.stdout).not.toMatch(/Pattern verification failed|error|failed/i);
      expect(q.stdout.match(/^read 4096\/4096/gm)?.length).toBe(64);
      await server.stop();
      await run('cmp', [files.legs[0]!, files.legs[1]!]);
    });
  }

  it('a bad value is a usage error naming the flag', async () => {
    const d = join(dir(), 'bad');
    await mkdir(d);
    const files = await makeMirrorFiles(d, 2, SIZE);
    const table = mirrorTable({ legs: files.legs, sizeBytes: SIZE, sync: 'nosync' });
    await expect(startServer({ dir: d, tables: [{ table }], extraArgs: ['--poll-max-us', '-3'] })).rejects.toThrow(/--poll-max-us -3: expected a non-negative integer/);
  });
});
