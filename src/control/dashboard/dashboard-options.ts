// The dashboard's serve options (--dashboard PORT; 0 = none) and their validation, apart from the
// dashboard itself (dashboard.ts, loaded only when a dashboard starts): serve registers and checks these at
// start-up without loading the listener, the page's routes or the metrics.
import { Option, type Command } from 'commander';
import { readToken } from '../control-path.js';
import { UsageError } from '../usage-error.js';
import { errorText } from '../volumes.js';

/** Default dashboard port (127.0.0.1 only). If it is taken, serve warns and runs without a dashboard. */
export const DASHBOARD_PORT_DEFAULT = 7390;

export interface DashboardFlags {
  dashboard?: string;
  controlTokenFile?: string;
}

export function addDashboardOptions(cmd: Command): Command {
  return cmd.addOption(
    new Option('--dashboard <port>', `web dashboard and /metrics on http://127.0.0.1:PORT (0 = none)`).default(String(DASHBOARD_PORT_DEFAULT)),
  );
}

/** Validated dashboard settings (UsageError naming the flag on bad input). */
export interface DashboardPlan {
  readonly port: number;
  /** The port was not given: a busy default port is a warning, not an error. */
  readonly portIsDefault: boolean;
  readonly token: string;
}

export function dashboardPlan(flags: DashboardFlags, argv: readonly string[] = process.argv): DashboardPlan | null {
  const text = flags.dashboard ?? String(DASHBOARD_PORT_DEFAULT);
  if (!/^[0-9]{1,5}$/.test(text) || Number(text) > 65535) throw new UsageError(`--dashboard ${text}: expected a port number 1..65535, or 0 for none`);
  const port = Number(text);
  if (port === 0) return null;
  // With --control-tcp's token file the dashboard takes the same token; otherwise a fresh one per start.
  let token: string;
  if (flags.controlTokenFile !== undefined) {
    try {
      token = readToken(flags.controlTokenFile);
    } catch (e) {
      throw new UsageError(`--control-token-file ${flags.controlTokenFile}: ${errorText(e)}`);
    }
  } else {
    // WebCrypto's global: node:crypto is loaded only when a token is made, not at every serve start.
    token = Buffer.from(globalThis.crypto.getRandomValues(new Uint8Array(16))).toString('hex');
  }
  const portIsDefault = !argv.some((a) => a === '--dashboard' || a.startsWith('--dashboard='));
  return { port, portIsDefault, token };
}
