// Types of run-guest.js for the TypeScript tests (test/kernel/*.ts import the JS module directly).
export declare const GUEST_HOST_ADDR: string;
export declare const USER_NIC_MAC: string;

export interface GuestStep {
  name: string;
  /** ms since qemu started (host clock) */
  startMs: number;
  /** until the next step or the end */
  durationMs: number;
}

export interface GuestResult {
  outcome: 'pass' | 'fail' | 'timeout' | 'crash' | 'aborted';
  passed: boolean;
  failReason: string | null;
  steps: GuestStep[];
  /** last dmesg lines (since /init started) the guest printed on failure */
  dmesg: string[];
  /** the serial console (tail) */
  log: string;
  /** the whole console log, kept on failure */
  logPath: string;
  wallMs: number;
  /** host time until the guest's `TEST: ready` line */
  bootMs: number | null;
  accel: 'tcg' | 'kvm';
  /** qemu's peak resident set (VmHWM) in KiB, sampled on console output */
  peakRssKiB: number;
}

export interface GuestOptions {
  /** image name from scripts/vm/images.js (default ext4) */
  image?: string;
  /** shell script run as /test/test.sh under `set -e` with /lib/nbdm/lib.sh sourced */
  script: string;
  /** exported to the script (NBDM_NBD_PORT, NBDM_NBD_EXPORT, ...) */
  env?: Record<string, string | number>;
  timeoutMs?: number;
  memMiB?: number;
  workDir?: string;
  /** every console line as it arrives */
  onLine?: (line: string) => void;
  extraArgs?: string[];
  accel?: 'tcg' | 'kvm';
  /** SIGKILL qemu as soon as a console line matches (the client machine dies: no DISC) */
  killOn?: RegExp;
  /** stop qemu when this fires (outcome 'aborted' unless the guest already reported PASS/FAIL) */
  abort?: AbortSignal;
}

export declare function runGuest(opts: GuestOptions): Promise<GuestResult>;
export declare function describeResult(r: GuestResult): string;
export declare function parseConsole(text: string): { steps: string[]; outcome: 'pass' | 'fail' | null; failReason: string | null; dmesg: string[] };
export declare function chooseAccel(): Promise<'tcg' | 'kvm'>;
export declare function kvmLooksUsable(): boolean;
export declare function stopQemu(pidFile: string, signal?: NodeJS.Signals): Promise<void>;
export declare function envFile(env: Record<string, string | number>): string;
export declare function writeInitrdWithOverlay(baseInitrd: string, files: [string, string | Buffer, number?][], out: string): void;
