// The data path's on/off environment switches (src/control/env-switches.ts): 0, 1, empty or unset pass; any
// other value is a usage error naming the variable and what it switches. Through the real CLI, serve refuses
// such a value before it opens anything (exit 2, the message on stderr, no socket listening).
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { checkEnvSwitches, ENV_SWITCHES } from '../../../src/control/env-switches.js';
import { UsageError } from '../../../src/control/usage-error.js';
import { useTempDir } from '../../helpers/e2e.js';
import { run } from '../../helpers/run.js';
import { CLI_PATH } from '../../helpers/server.js';
import { makeMirrorFiles, mirrorTable } from '../../helpers/tables.js';
import { MiB } from '../../helpers/tmp.js';

const dir = useTempDir('env-switches');

describe('environment switches', () => {
  it('0, 1, empty and unset pass', () => {
    for (const name of Object.keys(ENV_SWITCHES)) {
      for (const v of ['0', '1', '', undefined]) expect(() => checkEnvSwitches({ [name]: v })).not.toThrow();
    }
    expect(Object.keys(ENV_SWITCHES).sort()).toEqual(['NBD_MIRROR_COPY_RANGE', 'NBD_MIRROR_FAST_IO', 'NBD_MIRROR_SPLICE', 'NBD_MIRROR_SYNC_IO']);
  });

  it('anything else is a usage error naming the variable, its value and what it switches', () => {
    for (const name of Object.keys(ENV_SWITCHES)) {
      for (const v of ['yes', 'off', 'true', ' 1', '2']) {
        let err: unknown;
        try {
          checkEnvSwitches({ [name]: v });
        } catch (e) {
          err = e;
        }
        expect(err).toBeInstanceOf(UsageError);
        expect((err as Error).message).toBe(`${name}=${v}: expected 0 or 1 (${ENV_SWITCHES[name]})`);
      }
    }
  });

  it('serve refuses NBD_MIRROR_SPLICE=yes before listening: exit 2, the message on stderr', async () => {
    const d = dir();
    const files = await makeMirrorFiles(d, 2, 4 * MiB);
    const socket = join(d, 's.sock');
    const r = await run(process.execPath, [CLI_PATH, 'serve', '--table', mirrorTable({ legs: files.legs, sizeBytes: 4 * MiB, sync: 'nosync' }), '--listen', `unix:${socket}`, '--dashboard', '0'], {
      env: { ...process.env, NBD_MIRROR_SPLICE: 'yes' },
      allowFailure: true,
    });
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('NBD_MIRROR_SPLICE=yes: expected 0 or 1');
    expect(existsSync(socket)).toBe(false);
  });
});
