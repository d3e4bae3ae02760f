// serve's dashboard when its port was not chosen: a taken default port moves to the next free one (two
// servers on one host both get a dashboard); a port given with --dashboard is used or refused.
import { createServer, type Server } from 'node:net';
import { afterEach, describe, expect, test } from 'vitest';
import { ServeDashboard } from '../../src/control/dashboard/serve-dashboard.js';
import { UsageError } from '../../src/control/usage-error.js';
import { Volumes } from '../../src/control/volumes.js';

const quiet = { info: () => undefined, warn: () => undefined };
const open: Array<{ close(): Promise<void> | void }> = [];
afterEach(async () => {
  for (const c of open.splice(0).reverse()) await c.close();
});

function occupy(): Promise<{ server: Server; port: number }> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const a = server.address();
      if (a === null || typeof a !== 'object') return reject(new Error('no address'));
      open.push({ close: () => new Promise<void>((r) => server.close(() => r())) });
      resolve({ server, port: a.port });
    });
  });
}

describe('dashboard port', () => {
  test('a taken default port moves up to the next free one', async () => {
    const { port } = await occupy();
    // process.argv of the test runner has no --dashboard: the port counts as the default one.
    const obs = ServeDashboard.fromFlags({ dashboard: String(port), control: '/nonexistent/control.sock' }, quiet);
    open.push(obs);
    const lines = await obs.start(new Volumes());
    const m = /^dashboard http:\/\/127\.0\.0\.1:(\d+)\//.exec(lines[0] ?? '');
    expect(m, lines.join('\n')).not.toBeNull();
    const got = Number(m![1]);
    expect(got).toBeGreaterThan(port);
    expect(got).toBeLessThan(port + 10);
  });

  test('a taken port given with --dashboard is refused with a clear error', async () => {
    const { port } = await occupy();
    const argv = [...process.argv, '--dashboard', String(port)];
    const saved = process.argv;
    process.argv = argv;
    try {
      const obs = ServeDashboard.fromFlags({ dashboard: String(port), control: '/nonexistent/control.sock' }, quiet);
      open.push(obs);
      const err = await obs.start(new Volumes()).then(() => null, (e: unknown) => e);
      expect(err).toBeInstanceOf(UsageError);
      expect(String((err as Error).message)).toContain(`--dashboard ${port}`);
      expect(String((err as Error).message)).toContain('EADDRINUSE');
    } finally {
      process.argv = saved;
    }
  });
});
