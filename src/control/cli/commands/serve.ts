// `nbd-mirror serve`: serve one or more dm tables over NBD until SIGTERM/SIGINT.
// Validates everything (tables, names, files, addresses) before anything listens; bad input is a
// UsageError (exit 2). Prints where it listens and how to connect on stdout; logs go to stderr.
// With --pid-file, the pid file is written only once every address listens (tests wait for it), and
// removed on a clean exit.
// Start-up time is resync time (a table that needs a resync starts copying when it opens), so what only
// some options need is imported when they are given: the cluster log (cluster tables), the pool
// (serve-pool.ts), pretty logs (a terminal), metrics and the dashboard's WebSocket (dashboard.ts).
import { readFile, rename, unlink, writeFile } from 'node:fs/promises';
import { Command, Option } from 'commander';
import type { ServerTls } from '../../../nbd/tls/server-tls.js';
import { createLogger, LOG_LEVELS, type LogLevel } from '../../logging.js';
import { addDashboardOptions, type DashboardFlags } from '../../dashboard/dashboard-options.js';
import { ServeDashboard } from '../../dashboard/serve-dashboard.js';
import { DEFAULT_LISTEN, formatListenAddress, parseListenAddress, type ListenAddress } from '../../listen-address.js';
import { buildServePlan } from '../../serve-plan.js';
import { startService, type Service } from '../../service.js';
import { addControlPlaneOptions, ControlPlane, type ControlPlaneFlags } from '../../control-plane.js';
import { openLocalLog, type LogOpener } from '../../../mirror/open.js';
import { EXIT_FAILURE, EXIT_OK, UsageError } from '../../usage-error.js';
import { checkEnvSwitches } from '../../env-switches.js';
import { addServeTlsOptions, reloadTls, serveConnectHints, serveServerOptions, type ServeTlsFlags } from '../../serve-tls.js';
import { startupDone } from '../startup-done.js';

/** After SIGTERM, in-flight requests get this long to finish before we give up and exit non-zero. */
export const SHUTDOWN_GRACE_MS = 8000;

interface ServeFlags extends ControlPlaneFlags, DashboardFlags, ServeTlsFlags {
  table: string[];
  name: string[];
  tableFile: string[];
  listen: string[];
  readOnly: boolean;
  pidFile?: string;
  logLevel: LogLevel;
  quiet: boolean;
}

/** Cluster tables (clustered-core / clustered-disk) get a corosync cluster log; others a local log. */
const openLog: LogOpener = async (spec, ctx) =>
  spec.clustered ? (await import('../../../cluster/log-opener.js')).clusterLogOpener()(spec, ctx) : openLocalLog(spec, ctx);

const collect = (value: string, previous: string[]): string[] => [...previous, value];

export function registerServe(program: Command): void {
  addServeTlsOptions(addDashboardOptions(addControlPlaneOptions(program
    .command('serve'))))
    .description('serve dm tables (linear or mirror) over NBD until SIGTERM or SIGINT')
    .option('--table <line>', 'a dm table line, e.g. "0 2097152 linear /srv/a.img 0" (repeatable)', collect, [])
    .option('--name <export>', 'export name for the --table at the same position (repeatable)', collect, [])
    .option('--table-file <file>', 'file of "NAME: <table>" or bare table lines; # comments (repeatable)', collect, [])
    .option('--listen <address>', `unix:PATH or tcp:HOST:PORT (repeatable; default ${formatListenAddress(DEFAULT_LISTEN)})`, collect, [])
    .option('--read-only', 'serve every export read-only', false)
    .option('--pid-file <file>', 'write the process id here once listening; removed on exit')
    .addOption(new Option('--log-level <level>', 'stderr log level').choices(LOG_LEVELS).default('info'))
    .option('--quiet', 'do not print the connection help on stdout', false)
    .action(async (flags: ServeFlags) => {
      await serve(flags);
    });
}

async function readTableFiles(paths: readonly string[]): Promise<{ path: string; text: string }[]> {
  const files: { path: string; text: string }[] = [];
  for (const path of paths) {
    try {
      files.push({ path, text: await readFile(path, 'utf8') });
    } catch (err) {
      throw new UsageError(`--table-file ${path}: ${(err as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (err as Error).message}`);
    }
  }
  return files;
}

function parseListens(texts: readonly string[]): ListenAddress[] {
  const addresses = texts.length === 0 ? [DEFAULT_LISTEN] : texts.map(parseListenAddress);
  const seen = new Set<string>();
  for (const a of addresses) {
    const key = formatListenAddress(a);
    if (seen.has(key)) throw new UsageError(`--listen ${key} given twice`);
    seen.add(key);
  }
  return addresses;
}

async function serve(flags: ServeFlags): Promise<void> {
  checkEnvSwitches();
  const plan = buildServePlan({ tables: flags.table, names: flags.name, tableFiles: await readTableFiles(flags.tableFile) });
  const listen = parseListens(flags.listen);
  const log = createLogger(flags.logLevel);
  const serverOptions = serveServerOptions(flags, plan.exports.map((e) => e.name), log);
  const control = ControlPlane.fromFlags(flags, { readOnly: flags.readOnly, log, openLog });
  const dashboard = ServeDashboard.fromFlags(flags, log);
  const service = await startService({ plan, listen, readOnly: flags.readOnly, log, openExport: dashboard.meter(control.openExport), server: serverOptions });
  // Re-read TLS keys on SIGHUP and `nbd-mirror message NAME reload-tls`; connected clients keep their sessions.
  control.volumes.setOpenCounter((name) => service.openCount(name));
  control.volumes.serverMessages.set('reload-tls', async () => reloadTls(serverOptions.tls, log));
  process.on('SIGHUP', () => {
    try {
      reloadTls(serverOptions.tls, log);
    } catch {
      // logged by reloadTls; the old keys stay
    }
  });
  const controlLines = await control.start().catch(async (e: unknown) => {
    await service.close().catch(() => undefined);
    throw e;
  });
  const dashboardLines = await dashboard.start(control.volumes).catch(async (e: unknown) => {
    await control.close().catch(() => undefined);
    await service.close().catch(() => undefined);
    throw e;
  });
  if (!flags.quiet) process.stdout.write([...dashboardLines, ...controlLines].map((l) => `${l}\n`).join(''));

  if (!flags.quiet) process.stdout.write(describeService(service, flags.readOnly, serverOptions.tls));

  let stopping = false;
  const stop = (signal: NodeJS.Signals): void => {
    if (stopping) {
      log.warn({ signal }, 'second signal during shutdown: exiting now');
      process.exit(EXIT_FAILURE);
    }
    stopping = true;
    log.info({ signal }, 'shutting down: finishing requests, flushing and closing exports');
    const timer = setTimeout(() => {
      log.error({ graceMs: SHUTDOWN_GRACE_MS }, 'shutdown did not finish in time');
      process.exit(EXIT_FAILURE);
    }, SHUTDOWN_GRACE_MS);
    void shutdown(service, flags.pidFile, control, dashboard).then(
      () => {
        clearTimeout(timer);
        log.info({}, 'closed cleanly');
        process.exit(EXIT_OK);
      },
      (err: unknown) => {
        clearTimeout(timer);
        log.error({ err: (err as Error).message }, 'shutdown failed');
        process.exit(EXIT_FAILURE);
      },
    );
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  // The pid file says "ready": only once SIGTERM/SIGINT are handled, so a signal sent as soon as it
  // appears gets the clean shutdown, not node's default (immediate death).
  if (flags.pidFile !== undefined) await writePidFile(flags.pidFile);
  log.info({ exports: service.exports.map((e) => e.name), listen: service.listening.map(formatListenAddress) }, 'serving');
  startupDone();
}

async function shutdown(service: Service, pidFile: string | undefined, control: ControlPlane, dashboard: ServeDashboard): Promise<void> {
  try {
    await dashboard.close();
    await control.beforeShutdown();
    await service.close();
    await control.close();
  } finally {
    if (pidFile !== undefined) await unlink(pidFile).catch(() => undefined);
  }
}

async function writePidFile(path: string): Promise<void> {
  // Write then rename, so a reader never sees a partial pid.
  const tmp = `${path}.${process.pid}.tmp`;
  try {
    await writeFile(tmp, `${process.pid}\n`);
    await rename(tmp, path);
  } catch (err) {
    throw new Error(`--pid-file ${path}: ${(err as Error).message}`);
  }
}

export function formatBytes(n: number): string {
  const units = ['bytes', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let i = 0;
  while (v >= 1024 && i < units.length - 1 && v % 1024 === 0) {
    v /= 1024;
    i++;
  }
  return `${v} ${units[i]}`;
}

export function describeService(service: Service, readOnly: boolean, tls?: ServerTls): string {
  const lines: string[] = [];
  lines.push(`nbd-mirror: serving ${service.exports.length} export${service.exports.length === 1 ? '' : 's'}${readOnly ? ' read-only' : ''}`);
  for (const e of service.exports) {
    const caps = e.export.capabilities();
    const isDefault = e.name === service.defaultExportName ? ' (default: also served as "")' : '';
    const what = e.spec.kind === 'linear' ? `linear on ${e.spec.leg.device}` : `mirror of ${e.spec.legs.length} legs, ${e.spec.log.kind} log`;
    lines.push(`  export "${e.name}"${isDefault}: ${formatBytes(caps.sizeBytes)}, ${what}`);
  }
  for (const a of service.listening) {
    lines.push(`listening on ${formatListenAddress(a)}`);
    lines.push('  connect with:');
    for (const hint of serveConnectHints(a, service.defaultExportName, tls)) lines.push(`    ${hint}`);
  }
  if (service.exports.length > 1) {
    const s = tls === undefined ? '' : 's';
    lines.push(`  other exports: put the name in the URI path (nbd${s}+unix:///NAME?socket=... or nbd${s}://HOST:PORT/NAME),`);
    lines.push('  or nbd-client -name NAME; list them with nbdinfo --list URI');
  }
  return `${lines.join('\n')}\n`;
}
