// Runs the real server Connection over a FakeSocket with a scripted client byte stream.

import { Connection } from '../../../src/nbd/server/connection.js';
import { resolveLimits, type ServerLimits } from '../../../src/nbd/server/limits.js';
import { NULL_LOGGER } from '../../../src/nbd/server/log.js';
import { MemoryExport, type MemoryExportOptions } from '../../helpers/memory-export.js';
import { FakeSocket } from './fake-socket.js';

export interface ScriptResult {
  readonly out: Buffer;
  /** True if the server destroyed the connection (hard disconnect) rather than ending it. */
  readonly destroyed: boolean;
  readonly exp: MemoryExport;
}

export async function runScript(
  input: Buffer,
  opts: { exportOptions?: Partial<MemoryExportOptions>; limits?: Partial<ServerLimits>; endInput?: boolean } = {},
): Promise<ScriptResult> {
  const limits = resolveLimits(opts.limits);
  const sock = new FakeSocket();
  const exp = new MemoryExport({ sizeBytes: 1 << 20, ...opts.exportOptions });
  // A graceful close is end() from the server; anything else (destroy) is a hard disconnect.
  let ended = false;
  const origEnd = sock.end.bind(sock) as (...a: unknown[]) => FakeSocket;
  (sock as { end: (...a: unknown[]) => FakeSocket }).end = (...a: unknown[]) => {
    ended = true;
    return origEnd(...a);
  };
  const conn = new Connection(
    1,
    sock,
    {
      registry: new Map([
        ['disk', { export: exp, description: 'a disk' }],
        ['other', { export: new MemoryExport({ sizeBytes: 4096 }) }],
      ]),
      defaultExportName: 'disk',
      limits,
      shuttingDown: () => false,
    },
    limits,
    NULL_LOGGER,
  );
  sock.push(input);
  if (opts.endInput !== false) sock.push(null);
  await conn.done;
  return { out: sock.output(), destroyed: !ended, exp };
}
