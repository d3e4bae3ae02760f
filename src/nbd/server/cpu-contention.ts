// Whether other tasks want every CPU right now, for the idle poll (idle-poll.ts): spinning then takes a CPU
// from them, often from the very client we wait for (2 vCPUs, fio and a third busy process: QD1 IOPS fell
// to 0.86x [0.69-1.47] of not polling). Owns sampling the kernel's count of runnable tasks, the 4th field
// of /proc/loadavg ("R/T"), at most every SAMPLE_MS: contended when the others (R minus this thread) could
// fill every CPU this process may run on. Where it cannot be read (no /proc, no addon): never contended.

import { openSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { fastIo } from './fast-io.js';

/** How long one sample of /proc/loadavg stands (a pread of it costs a few microseconds). */
export const CONTENTION_SAMPLE_MS = 20;
const LOADAVG_BYTES_MAX = 128;

let fd: number | undefined;
const buf = Buffer.alloc(LOADAVG_BYTES_MAX);
const cpus = availableParallelism();
let sampledAtMs = -Infinity;
let contended = false;
let forced: boolean | null = null;

/** Tests: answer `v` from now on (the idle-poll tests must spin on a busy CI machine); null: sample again. */
export function setCpuContentionForTests(v: boolean | null): void {
  forced = v;
}

/** Runnable tasks other than this thread from a /proc/loadavg line ("0.5 0.6 0.7 3/140 1234"), or -1. */
export function runnableOthersOf(line: string): number {
  const field = line.split(' ')[3];
  const runnable = field === undefined ? NaN : Number.parseInt(field, 10);
  return Number.isSafeInteger(runnable) && runnable > 0 ? runnable - 1 : -1;
}

/** True when other runnable tasks could use every CPU (sampled at most every CONTENTION_SAMPLE_MS). */
export function cpusContended(nowMs: number): boolean {
  if (forced !== null) return forced;
  if (nowMs - sampledAtMs < CONTENTION_SAMPLE_MS) return contended;
  sampledAtMs = nowMs;
  const io = fastIo();
  if (fd === undefined) {
    try {
      fd = openSync('/proc/loadavg', 'r');
    } catch {
      fd = -1;
    }
  }
  if (fd < 0 || io === null) return (contended = false);
  const n = io.read(fd, buf, 0, LOADAVG_BYTES_MAX, 0);
  contended = n > 0 && runnableOthersOf(buf.toString('latin1', 0, n)) >= cpus;
  return contended;
}
