import { describe, expect, it } from 'vitest';
import { connectHints, exportUri } from '../../../src/control/connect-hints.js';

describe('connect hints', () => {
  it('builds NBD URIs for unix and tcp (IPv6 in brackets, names encoded)', () => {
    expect(exportUri({ kind: 'unix', path: '/run/x.sock' }, 'volume')).toBe('nbd+unix:///volume?socket=/run/x.sock');
    expect(exportUri({ kind: 'tcp', host: '127.0.0.1', port: 10809 }, '')).toBe('nbd://127.0.0.1:10809/');
    expect(exportUri({ kind: 'tcp', host: '::1', port: 5 }, 'a b')).toBe('nbd://[::1]:5/a%20b');
  });
  it('quotes for the shell and names the export for nbd-client', () => {
    const [nbdinfo, qemu, client] = connectHints({ kind: 'unix', path: '/run/x.sock' }, 'demo');
    expect(nbdinfo).toBe("nbdinfo 'nbd+unix:///demo?socket=/run/x.sock'");
    expect(qemu).toBe("qemu-img info 'nbd+unix:///demo?socket=/run/x.sock'");
    expect(client).toContain('nbd-client -unix /run/x.sock /dev/nbd0 -name demo');
    expect(connectHints({ kind: 'tcp', host: '127.0.0.1', port: 10809 }, 'demo')[2]).toContain('nbd-client 127.0.0.1 10809 /dev/nbd0 -name demo');
  });
});
