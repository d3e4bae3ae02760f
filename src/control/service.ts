// A running service: the exports opened from a ServePlan and the NBD server listening on its addresses.
// Owns start-up order and shutdown order, so the CLI (and later the control socket) only call
// startService/close.
//
// Start-up: parse EVERY table first (nothing opened while any line is bad), check every listen address,
// open every export (closing those already open if one fails), then listen. The NBD server's modules load
// after the exports opened (a mirror that needs a resync starts copying as it opens: start-up is resync
// time; in the bundle, loading is evaluation on the main thread, better done while the copy runs). Any
// failure before the first byte is served is a UsageError (exit 2), naming the table's source or the
// address.
// Shutdown: stop listening and let the server finish in-flight requests and close connections, then
// flush and close each export (a mirror flushes its legs and its log), then remove unix socket files.
import { lstat, unlink } from 'node:fs/promises';
import { dirname } from 'node:path';
import { existsSync } from 'node:fs';
import type { Export } from '../nbd/export.js';
import type { ServerOptions } from '../nbd/server/server.js';
import type { Logger } from '../nbd/server/log.js';
import type { ExportEntry } from '../nbd/server/registry.js';
import { parseTable, TableError, type TableSpec } from '../mirror/table.js';
import { openTable } from '../mirror/open.js';
import { formatListenAddress, type ListenAddress } from './listen-address.js';
import { ReadOnlyExport } from './read-only-export.js';
import type { ServePlan } from './serve-plan.js';
import { socketAccepts } from './socket-probe.js';
import { UsageError } from './usage-error.js';

export interface ServiceOptions {
  readonly plan: ServePlan;
  readonly listen: readonly ListenAddress[];
  readonly readOnly: boolean;
  readonly log: Logger;
  /** Open each export through the control plane (control-plane.ts: a Volume's proxy) instead of openTable. */
  readonly openExport?: (name: string, spec: TableSpec) => Promise<Export>;
  /** TLS, allow rules and limits for the NBD server (serve-tls.ts). */
  readonly server?: Pick<ServerOptions, 'tls' | 'policy' | 'limits'>;
}

export interface OpenedExport {
  readonly name: string;
  readonly source: string;
  readonly spec: TableSpec;
  readonly export: Export;
}

export interface Service {
  readonly exports: readonly OpenedExport[];
  readonly defaultExportName: string;
  readonly listening: readonly ListenAddress[];
  /** Client connections in transmission with the export `name`. */
  openCount(name: string): number;
  /** Idempotent; resolves when everything is closed; rejects with the first close error. */
  close(): Promise<void>;
}

export function parsePlanTables(plan: ServePlan): { name: string; source: string; spec: TableSpec }[] {
  return plan.exports.map((e) => {
    try {
      return { name: e.name, source: e.source, spec: parseTable(e.tableLine) };
    } catch (err) {
      if (err instanceof TableError) throw new UsageError(`${e.source} (export "${e.name}"): bad table: ${err.message}`);
      throw err;
    }
  });
}

export async function startService(opts: ServiceOptions): Promise<Service> {
  const parsed = parsePlanTables(opts.plan);
  for (const address of opts.listen) await checkAddressUsable(address);

  const opened: OpenedExport[] = [];
  try {
    for (const p of parsed) {
      let exp: Export;
      const log = opts.log;
      const exportName = p.name;
      try {
        exp = opts.openExport ? await opts.openExport(p.name, p.spec) : await openTable(p.spec, {
          readOnly: opts.readOnly,
          warn: (message) => log.warn({ export: exportName }, message),
          // Until the control socket's event stream exists, mirror events go to the log (stderr JSON).
          mirror: { events: { emit: (event, payload) => log.info({ export: exportName, event, ...(payload as object) }, 'mirror event') } },
        });
      } catch (err) {
        throw new UsageError(`${p.source} (export "${p.name}"): cannot open: ${(err as Error).message}`);
      }
      // A linear table honours readOnly itself; a mirror opens its legs read-write, so wrap it.
      opened.push({ ...p, export: opts.readOnly && !exp.capabilities().readOnly ? new ReadOnlyExport(exp) : exp });
    }
  } catch (err) {
    await closeExports(opened, opts.log);
    throw err;
  }

  let NbdServer: typeof import('../nbd/server/server.js')['NbdServer'];
  try {
    ({ NbdServer } = await import('../nbd/server/server.js'));
  } catch (err) {
    await closeExports(opened, opts.log);
    throw err;
  }
  const registry = new Map<string, ExportEntry>(opened.map((o) => [o.name, { export: o.export }]));
  const server = new NbdServer({ ...opts.server, exports: registry, defaultExportName: opts.plan.defaultExportName, log: opts.log });
  const listening: ListenAddress[] = [];
  try {
    for (const address of opts.listen) {
      try {
        await server.listen(address);
      } catch (err) {
        throw new UsageError(`cannot listen on ${formatListenAddress(address)}: ${(err as Error).message}`);
      }
    }
    listening.push(...server.addresses());
  } catch (err) {
    await server.close().catch(() => undefined);
    await removeSocketFiles(listening);
    await closeExports(opened, opts.log);
    throw err;
  }

  let closing: Promise<void> | undefined;
  return {
    exports: opened,
    defaultExportName: opts.plan.defaultExportName,
    listening,
    openCount: (name) => server.openCount(name),
    close: () => {
      closing ??= (async () => {
        let first: unknown;
        await server.close().catch((e: unknown) => (first ??= e));
        await removeSocketFiles(listening);
        await closeExports(opened, opts.log).catch((e: unknown) => (first ??= e));
        if (first !== undefined) throw first;
      })();
      return closing;
    },
  };
}

/** Flush then close each export; every export is attempted; rejects with the first error. */
async function closeExports(opened: readonly OpenedExport[], log: Logger): Promise<void> {
  let first: unknown;
  for (const o of opened) {
    try {
      if (!o.export.capabilities().readOnly) await o.export.flush();
    } catch (err) {
      log.error({ export: o.name, err: (err as Error).message }, 'flush on close failed');
      first ??= err;
    }
    try {
      await o.export.close();
    } catch (err) {
      log.error({ export: o.name, err: (err as Error).message }, 'close failed');
      first ??= err;
    }
  }
  if (first !== undefined) throw first;
}

async function removeSocketFiles(addresses: readonly ListenAddress[]): Promise<void> {
  for (const a of addresses) {
    if (a.kind === 'unix') await unlink(a.path).catch(() => undefined);
  }
}

/**
 * A unix socket path must be in an existing directory and either absent, or a stale socket (nobody
 * accepts on it: removed, as nbdkit and qemu-nbd would fail otherwise). A live socket or another kind of
 * file is an error: we never take over someone else's socket or delete a regular file.
 */
async function checkAddressUsable(address: ListenAddress): Promise<void> {
  if (address.kind !== 'unix') return;
  const where = formatListenAddress(address);
  if (!existsSync(dirname(address.path))) throw new UsageError(`cannot listen on ${where}: directory ${dirname(address.path)} does not exist`);
  const st = await lstat(address.path).catch(() => undefined);
  if (st === undefined) return;
  if (!st.isSocket()) throw new UsageError(`cannot listen on ${where}: ${address.path} exists and is not a socket`);
  if (await socketAccepts(address.path)) throw new UsageError(`cannot listen on ${where}: another process is listening on it`);
  await unlink(address.path);
}

