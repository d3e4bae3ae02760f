// A real NbdServer with TLS on a unix socket (and optionally TCP 127.0.0.1:0) serving MemoryExports,
// with the log lines captured so tests can assert what the server said about refusals and limits.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ExportPolicy, parseAllowSpec } from '../../src/nbd/server/authz.js';
import type { Logger } from '../../src/nbd/server/log.js';
import { NbdServer, type ServerLimits } from '../../src/nbd/server/server.js';
import type { ServerTlsSettings } from '../../src/nbd/tls/config.js';
import { ServerTls } from '../../src/nbd/tls/server-tls.js';
import { MemoryExport, type MemoryExportOptions } from '../helpers/memory-export.js';
import { makeTlsFixtures, type TlsFixtures } from './fixtures.js';

export interface LogLine {
  readonly level: string;
  readonly msg: string;
  readonly fields: Record<string, unknown>;
}

export class CapturingLogger implements Logger {
  readonly lines: LogLine[] = [];
  private push(level: string, fields: object, msg: string): void {
    if (this.lines.length < 100_000) this.lines.push({ level, msg, fields: fields as Record<string, unknown> });
  }
  debug(f: object, m: string): void {
    this.push('debug', f, m);
  }
  info(f: object, m: string): void {
    this.push('info', f, m);
  }
  warn(f: object, m: string): void {
    this.push('warn', f, m);
  }
  error(f: object, m: string): void {
    this.push('error', f, m);
  }
  find(re: RegExp): LogLine[] {
    return this.lines.filter((l) => re.test(l.msg) || re.test(JSON.stringify(l.fields)));
  }
}

export interface TlsHarness {
  readonly dir: string;
  readonly fx: TlsFixtures;
  readonly socketPath: string;
  readonly server: NbdServer;
  readonly tls: ServerTls | undefined;
  readonly exports: Map<string, MemoryExport>;
  readonly log: CapturingLogger;
  /** 127.0.0.1 port, when tcp was asked for. */
  readonly port: number;
  close(): Promise<void>;
}

export interface TlsHarnessOptions {
  /** Build the TLS settings from the fixtures (omit: no TLS). */
  readonly tls?: (fx: TlsFixtures) => ServerTlsSettings;
  readonly allow?: readonly string[];
  readonly tcp?: boolean;
  readonly limits?: Partial<ServerLimits>;
  /** Reuse fixtures made by an earlier harness. */
  readonly fixtures?: TlsFixtures;
}

export async function startTlsHarness(
  exportsSpec: Record<string, MemoryExportOptions>,
  opts: TlsHarnessOptions,
): Promise<TlsHarness> {
  const dir = await mkdtemp(join(tmpdir(), 'nbd-tls-'));
  const fx = opts.fixtures ?? makeTlsFixtures(join(dir));
  const log = new CapturingLogger();
  const exports = new Map<string, MemoryExport>();
  const registry = new Map<string, { export: MemoryExport }>();
  for (const [name, spec] of Object.entries(exportsSpec)) {
    const e = new MemoryExport(spec);
    exports.set(name, e);
    registry.set(name, { export: e });
  }
  const tls = opts.tls === undefined ? undefined : new ServerTls(opts.tls(fx), log);
  const policy = opts.allow === undefined ? undefined : new ExportPolicy(opts.allow.map(parseAllowSpec));
  const server = new NbdServer({
    exports: registry,
    log,
    ...(tls !== undefined ? { tls } : {}),
    ...(policy !== undefined ? { policy } : {}),
    ...(opts.limits !== undefined ? { limits: opts.limits } : {}),
  });
  const socketPath = join(dir, 'nbd.sock');
  await server.listen({ kind: 'unix', path: socketPath });
  let port = 0;
  if (opts.tcp === true) {
    await server.listen({ kind: 'tcp', host: '127.0.0.1', port: 0 });
    const a = server.addresses().find((x) => x.kind === 'tcp');
    port = a?.kind === 'tcp' ? a.port : 0;
  }
  return {
    dir,
    fx,
    socketPath,
    server,
    tls,
    exports,
    log,
    port,
    close: async () => {
      await server.close();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

export const MiB = 1024 * 1024;
