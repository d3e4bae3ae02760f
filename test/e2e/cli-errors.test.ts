// Bad input to `nbd-mirror serve` exits 2 with a message naming the problem, and nothing listens.
import { existsSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { CLI_PATH } from '../helpers/server.js';
import { run } from '../helpers/run.js';
import { useTempDir } from '../helpers/e2e.js';
import { createSparseFile, MiB } from '../helpers/tmp.js';

const dir = useTempDir('cli-errors');

async function serve(args: string[]) {
  const sock = join(dir(), 'never.sock');
  const isolation = ['--control', join(dir(), 'never.ctl'), '--dashboard', '0'];
  const result = await run(process.execPath, [CLI_PATH, 'serve', '--listen', `unix:${sock}`, ...isolation, ...args], { allowFailure: true, timeoutMs: 20_000 });
  expect(existsSync(sock), 'nothing may listen after bad input').toBe(false);
  return result;
}

describe('serve rejects bad input with exit 2 before listening', () => {
  it('bad table: names the bad token', async () => {
    const r = await serve(['--table', '0 2048 linaer /x 0']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/--table #1 \(export "volume"\): bad table: .*linaer/);
  });
  it('missing backing file: names the file', async () => {
    const r = await serve(['--table', `0 2048 linear ${join(dir(), 'nope.img')} 0`]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('nope.img');
    expect(r.stderr).toContain('cannot open');
  });
  it('backing file too small: says so', async () => {
    const small = await createSparseFile(join(dir(), 'small.img'), 1 * MiB);
    const r = await serve(['--table', `0 4096 linear ${small} 0`]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/too small/);
  });
  it('bad listen address', async () => {
    const r = await run(process.execPath, [CLI_PATH, 'serve', '--listen', 'tcp:127.0.0.1:99999', '--dashboard', '0', '--table', '0 8 linear /x 0'], { allowFailure: true });
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('port 99999 is above 65535');
  });
  it('duplicate export names', async () => {
    const f = await createSparseFile(join(dir(), 'dup.img'), 1 * MiB);
    const r = await serve(['--table', `0 8 linear ${f} 0`, '--name', 'x', '--table', `0 8 linear ${f} 8`, '--name', 'x']);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('duplicate export name "x" (--table #1 and --table #2)');
  });
  it('missing --table-file and a table file with a bad line', async () => {
    const missing = await serve(['--table-file', join(dir(), 'missing.conf')]);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toContain('missing.conf: no such file');
    const conf = join(dir(), 'bad.conf');
    await writeFile(conf, '# two exports\ngood: 0 8 linear /dev/null 0\nbad: 0 8 mirror core 1\n');
    const bad = await serve(['--table-file', conf]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain(`${conf}:3 (export "bad"): bad table`);
  });
  it('unknown option and nothing to serve', async () => {
    expect((await serve(['--tabel', 'x'])).code).toBe(2);
    const none = await serve([]);
    expect(none.code).toBe(2);
    expect(none.stderr).toContain('nothing to serve');
  });
  it('a live socket is not taken over', async () => {
    const f = await createSparseFile(join(dir(), 'live.img'), 1 * MiB);
    const { startServer } = await import('../helpers/server.js');
    const first = await startServer({ dir: dir(), label: 'live', tables: [{ table: `0 2048 linear ${f} 0` }] });
    const r = await run(process.execPath, [CLI_PATH, 'serve', '--listen', `unix:${first.socketPath}`, '--control', join(dir(), 'second.ctl'), '--dashboard', '0', '--table', `0 2048 linear ${f} 0`], { allowFailure: true });
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('another process is listening on it');
    await first.stop();
  });
});
