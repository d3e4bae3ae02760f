// What `serve` adds for the operator: I/O metrics on every export, and the dashboard listener (page,
// /metrics, live feed, actions through the control socket). serve.ts makes three calls:
//   const obs = ServeDashboard.fromFlags(flags, log)          before anything opens (validates --dashboard)
//   openExport: obs.meter(control.openExport)                 every export counted under its name
//   lines = await obs.start(control.volumes)                  after the control socket listens
//   await obs.close()                                         at shutdown
// A taken default port moves to the next free one of 7390..7399 (then a warning: serve runs on without a
// dashboard); a taken explicit port is an error. With --dashboard 0 nothing reads the counters: exports
// are not metered, and neither the metrics nor the dashboard are loaded. With a dashboard, the metrics
// module loads while the first export opens, the dashboard (and prom-client, ws) when it starts.
import { hostname } from 'node:os';
import { resolve } from 'node:path';
import type { Export } from '../../nbd/export.js';
import type { TableSpec } from '../../mirror/table.js';
import { defaultControlPath } from '../control-path.js';
import type { Metrics } from '../metrics.js';
import { UsageError } from '../usage-error.js';
import { errorText, type Volumes } from '../volumes.js';
import type { Dashboard } from './dashboard.js';
import { dashboardPlan, type DashboardFlags, type DashboardPlan } from './dashboard-options.js';

/** Ports tried from the default one up when it is taken (7390..7399). */
const DEFAULT_PORT_TRIES = 10;

interface Log {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
}

export class ServeDashboard {
  /** Loaded on first use; never without a dashboard (--dashboard 0): nothing would read the counters. */
  private metricsLoaded: Promise<Metrics> | undefined;
  private dashboard: Dashboard | undefined;

  private constructor(
    private readonly plan: DashboardPlan | null,
    private readonly controlSocketPath: string,
    private readonly log: Log,
    private readonly node: string,
  ) {}

  private metrics(): Promise<Metrics> {
    this.metricsLoaded ??= import('../metrics.js').then(({ Metrics }) => new Metrics());
    return this.metricsLoaded;
  }

  static fromFlags(flags: DashboardFlags & { control?: string }, log: Log): ServeDashboard {
    // The same default as ControlPlane.fromFlags: this process's socket.
    return new ServeDashboard(dashboardPlan(flags), resolve(flags.control ?? defaultControlPath()), log, hostname());
  }

  /** Wrap an export opener so every export's requests are counted under its name. */
  meter(open: (name: string, spec: TableSpec) => Promise<Export>): (name: string, spec: TableSpec) => Promise<Export> {
    if (this.plan === null) return open;
    return async (name, spec) => {
      const metrics = this.metrics(); // loads while the export opens
      metrics.catch(() => undefined); // awaited below (and by start); an open failure must not leave it unhandled
      const e = await open(name, spec);
      return (await metrics).wrap(name, e);
    };
  }

  /** Start the listener; returns the lines for the start banner (the dashboard's URL first). */
  async start(volumes: Volumes): Promise<string[]> {
    if (this.plan === null) return [];
    const [metrics, { Dashboard }] = await Promise.all([this.metrics(), import('./dashboard.js')]);
    metrics.attachVolumes(volumes);
    await metrics.registry(); // default process metrics are collected from now on
    // A default port that is taken (a second server on this host) moves to the next free one of a few;
    // a port the user chose is used or refused.
    const tries = this.plan.portIsDefault ? DEFAULT_PORT_TRIES : 1;
    let lastError: unknown;
    for (let i = 0; i < tries && this.dashboard === undefined; i++) {
      try {
        this.dashboard = await Dashboard.start({
          volumes,
          metrics,
          controlSocketPath: this.controlSocketPath,
          port: this.plan.port + i,
          token: this.plan.token,
          node: this.node,
          log: this.log,
        });
      } catch (e) {
        lastError = e;
        if ((e as NodeJS.ErrnoException).code !== 'EADDRINUSE') break;
      }
    }
    if (this.dashboard === undefined) {
      const range = tries > 1 ? `${this.plan.port}..${this.plan.port + tries - 1}` : String(this.plan.port);
      const why = `cannot start the dashboard on 127.0.0.1:${range}: ${errorText(lastError)}`;
      if (!this.plan.portIsDefault) throw new UsageError(`--dashboard ${this.plan.port}: ${why}`);
      this.log.warn({ port: this.plan.port }, `${why}; running without a dashboard (choose a port with --dashboard PORT)`);
      return [`dashboard: not started (127.0.0.1:${range} taken; use --dashboard PORT)`];
    }
    const d = this.dashboard;
    this.log.info({ dashboard: d.baseUrl, metrics: `${d.baseUrl}/metrics` }, 'dashboard listening');
    return [`dashboard ${d.url}`, `metrics ${d.baseUrl}/metrics`];
  }

  async close(): Promise<void> {
    await this.dashboard?.close();
  }
}
