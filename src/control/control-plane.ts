// ControlPlane: what `serve` needs to be controllable. Adds the serve options (--control, --control-tcp,
// --control-token-file, --repair-policy, --spare), opens each export as a Volume (the NBD registry gets
// the Volume's stable proxy), starts the control socket and the repair policy, and stops them.
//
// serve.ts uses three calls: `addControlPlaneOptions(cmd)`, `ControlPlane.fromFlags(flags, ctx)` before
// startService (its `openExport` goes to startService), `start()` after it, `close()` at shutdown.
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { Option, type Command } from 'commander';
import type { Export } from '../nbd/export.js';
import type { LogOpener } from '../mirror/open.js';
import type { TableSpec } from '../mirror/table.js';
import { ControlError } from './control-error.js';
import { REPAIR_POLICIES, RepairPolicy, type RepairPolicyName } from './repair.js';
import { CONTROL_TOKEN_CHARS_MIN, defaultControlPath } from './control-path.js';
import type { ControlServer } from './server.js';
import { tableBackend } from './table-backend.js';
import { logVolumeEvent } from './logging.js';
import { UsageError } from './usage-error.js';
import { errorText, Volume, Volumes, type VolumeEvent } from './volumes.js';

export interface ControlPlaneFlags {
  control?: string;
  controlTcp?: string;
  controlTokenFile?: string;
  repairPolicy?: RepairPolicyName;
  spare?: string[];
}

interface Log {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
}

const collect = (value: string, previous: string[]): string[] => [...previous, value];
/** sun_path is 108 bytes on Linux including the NUL. */
const UNIX_SOCKET_PATH_BYTES_MAX = 107;

export function addControlPlaneOptions(cmd: Command): Command {
  return cmd
    .option('--control <path>', 'control socket (mode 0600; default $XDG_RUNTIME_DIR/nbd-mirror/PID.sock, /run/nbd-mirror/PID.sock as root)')
    .option('--control-tcp <port>', 'also serve the control API on 127.0.0.1:PORT (needs --control-token-file)')
    .option('--control-token-file <file>', 'bearer token for --control-tcp clients')
    .addOption(new Option('--repair-policy <policy>', 'on a leg failure (health D/F/U): none, remove the leg, or allocate a --spare').choices(REPAIR_POLICIES).default('none'))
    .option('--spare <dev>', 'spare device for --repair-policy allocate and for `repair` (repeatable)', collect, []);
}

export class ControlPlane {
  readonly volumes = new Volumes();
  private server: ControlServer | undefined;
  private policy: RepairPolicy | undefined;

  private constructor(
    private readonly socketPath: string,
    private readonly tcpPort: number | undefined,
    private readonly token: string | undefined,
    private readonly repairPolicy: RepairPolicyName,
    private readonly spares: string[],
    private readonly readOnly: boolean,
    private readonly log: Log,
    /** How mirror logs are built (serve passes the cluster log opener; default: local logs only). */
    private readonly openLog: LogOpener | undefined,
  ) {
    // Every volume event also goes to the log (stderr JSON), as the engine's events did before.
    this.volumes.on('event', (ev: VolumeEvent) => logVolumeEvent(this.log, ev));
  }

  /** Validate the flags (UsageError naming the bad one) before anything is opened. */
  static fromFlags(flags: ControlPlaneFlags, ctx: { readOnly: boolean; log: Log; openLog?: LogOpener }): ControlPlane {
    const socketPath = resolve(flags.control ?? defaultControlPath());
    if (Buffer.byteLength(socketPath) > UNIX_SOCKET_PATH_BYTES_MAX) {
      throw new UsageError(`--control ${socketPath}: path is longer than ${UNIX_SOCKET_PATH_BYTES_MAX} bytes`);
    }
    let tcpPort: number | undefined;
    let token: string | undefined;
    if (flags.controlTcp !== undefined) {
      if (!/^[0-9]{1,5}$/.test(flags.controlTcp) || Number(flags.controlTcp) > 65535) {
        throw new UsageError(`--control-tcp ${flags.controlTcp}: expected a port number 0..65535`);
      }
      tcpPort = Number(flags.controlTcp);
      if (flags.controlTokenFile === undefined) throw new UsageError('--control-tcp needs --control-token-file FILE');
      try {
        token = readFileSync(flags.controlTokenFile, 'utf8').trim();
      } catch (e) {
        throw new UsageError(`--control-token-file ${flags.controlTokenFile}: ${errorText(e)}`);
      }
      if (token.length < CONTROL_TOKEN_CHARS_MIN) {
        throw new UsageError(`--control-token-file ${flags.controlTokenFile}: token is shorter than ${CONTROL_TOKEN_CHARS_MIN} characters`);
      }
    } else if (flags.controlTokenFile !== undefined) {
      throw new UsageError('--control-token-file is only used with --control-tcp');
    }
    const policy = flags.repairPolicy ?? 'none';
    const spares = flags.spare ?? [];
    if (policy === 'allocate' && spares.length === 0) {
      throw new UsageError('--repair-policy allocate needs at least one --spare DEV');
    }
    return new ControlPlane(socketPath, tcpPort, token, policy, spares, ctx.readOnly, ctx.log, ctx.openLog);
  }

  /** For startService: open one export as a Volume; the server serves the returned proxy. */
  readonly openExport = async (name: string, spec: TableSpec): Promise<Export> => {
    const backend = tableBackend({
      readOnly: this.readOnly,
      warn: (m) => this.log.warn({ volume: name }, m),
      ...(this.openLog ? { openTable: { openLog: this.openLog } } : {}),
    });
    let v: Volume;
    try {
      v = await Volume.create(name, spec, backend);
    } catch (e) {
      throw e instanceof ControlError ? new Error(e.message) : e;
    }
    this.volumes.add(v);
    return v.proxy;
  };

  /** Listen on the control socket(s) and start the repair policy. Returns lines for the start banner. */
  async start(): Promise<string[]> {
    try {
      // Loaded here, after the exports opened: its HTTP server is not needed before the resync starts.
      const { ControlServer } = await import('./server.js');
      this.server = await ControlServer.start({
        volumes: this.volumes,
        socketPath: this.socketPath,
        ...(this.tcpPort !== undefined ? { tcpPort: this.tcpPort } : {}),
        ...(this.token !== undefined ? { token: this.token } : {}),
        spares: () => this.policy?.remainingSpares() ?? [...this.spares],
        log: this.log,
      });
    } catch (e) {
      throw new UsageError(`cannot start the control socket ${this.socketPath}: ${errorText(e)}`);
    }
    this.policy = new RepairPolicy(this.volumes, this.repairPolicy, this.spares);
    const lines = [`control socket ${this.server.socketPath} (e.g. nbd-mirror status --control ${this.server.socketPath})`];
    const tcp = this.server.tcp;
    if (tcp !== undefined) lines.push(`control API on tcp://${tcp.host}:${tcp.port} (bearer token required)`);
    if (this.repairPolicy !== 'none') lines.push(`repair policy ${this.repairPolicy}${this.spares.length > 0 ? `, spares ${this.spares.join(' ')}` : ''}`);
    this.log.info({ control: this.server.socketPath, tcp, repairPolicy: this.repairPolicy }, 'control socket listening');
    return lines;
  }

  /**
   * Before the service closes: no repair starts any more, and a volume that is suspended or holds writes
   * is brought back to a state the NBD server can drain: its inactive table is dropped, a flushing suspend
   * fails held writes with EIO (as dm's), and the live table is resumed.
   */
  async beforeShutdown(): Promise<void> {
    this.policy?.stop();
    await this.policy?.idle();
    await Promise.allSettled(
      this.volumes.list().map(async (v) => {
        if (v.state === 'ACTIVE' && v.info().heldWrites === 0) return;
        await v.clear();
        await v.suspend({ noflush: false });
        await v.resume();
      }),
    );
  }

  /** Stop the policy and the control socket; the volumes are closed by the service (through the proxies). */
  async close(): Promise<void> {
    this.policy?.stop();
    await this.policy?.idle();
    await this.server?.close();
    await this.volumes.closeAll();
  }
}
