// Structured logs: pino, one line per event, on stderr (stdout carries only the human "listening on" text).
// JSON lines when stderr is not a terminal (journald, files, tests parse them); pino-pretty when it is.
// Synchronous writes, so the last lines before an exit are not lost. pino-pretty is loaded only for a
// terminal (require, synchronous: createLogger stays sync): JSON logging does not pay for it at start-up.
//
// Owns: the process logger (createLogger, used by `serve` with --log-level) and how a volume event becomes
// a log line (logVolumeEvent): level by severity, and the same fields on every line: volume, leg, node,
// reason, event, eventNr, so `jq 'select(.leg)'` or a log search finds every line about a leg.
import { createRequire } from 'node:module';
import { hostname } from 'node:os';
import pino from 'pino';
import type PinoPrettyModule from 'pino-pretty';
import type { VolumeEvent } from './volumes.js';

export type { LogLevel } from './logger.js';
export { LOG_LEVELS } from './logger.js';
import type { LogLevel } from './logger.js';

export interface LoggerOptions {
  /** Pretty (human) output; default: stderr is a terminal. */
  readonly pretty?: boolean;
  /** This node's name on every line (default: the host name). */
  readonly node?: string;
}

export function createLogger(level: LogLevel, opts: LoggerOptions = {}): pino.Logger {
  const pretty = opts.pretty ?? process.stderr.isTTY === true;
  const base = { node: opts.node ?? hostname() };
  if (pretty) {
    const PinoPretty = createRequire(import.meta.url)('pino-pretty') as typeof PinoPrettyModule;
    const stream = PinoPretty({ destination: 2, sync: true, colorize: true, singleLine: true, translateTime: 'SYS:HH:MM:ss.l', ignore: 'pid,hostname,name' });
    return pino({ name: 'nbd-mirror', level, base }, stream);
  }
  return pino({ name: 'nbd-mirror', level, base: { ...base, pid: process.pid } }, pino.destination({ dest: 2, sync: true }));
}

/** The logger methods logVolumeEvent uses (pino's; control-plane's smaller Log type has info/warn). */
export interface EventLog {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  error?(obj: object, msg: string): void;
  debug?(obj: object, msg: string): void;
}

type Level = 'debug' | 'info' | 'warn' | 'error';

const EVENT_LEVELS: Record<string, Level> = {
  'leg-failed': 'error',
  'log-failed': 'error',
  'repair-failed': 'error',
  'resume-failed': 'error',
  'close-error': 'warn',
  'verify-mismatch': 'warn',
  'repair-skipped': 'warn',
  'repair-waiting': 'warn',
  'resync-progress': 'debug',
  'verify-progress': 'debug',
  membership: 'info',
};

/** The common fields of an event's log line: volume, leg, node, reason (absent when they do not apply). */
export function eventLogFields(ev: VolumeEvent): Record<string, unknown> {
  const d = ev.data;
  const leg = d.device ?? (Array.isArray(d.removed) && d.removed.length > 0 ? d.removed.join(',') : undefined) ?? d.legIndex;
  const reason = d.message ?? d.reason ?? d.kind ?? d.trigger;
  const node = d.node ?? d.nodeId;
  const fields: Record<string, unknown> = { volume: ev.volume, event: ev.kind, eventNr: ev.eventNr };
  if (leg !== undefined) fields.leg = leg;
  if (node !== undefined) fields.eventNode = node;
  if (reason !== undefined) fields.reason = reason;
  for (const [k, v] of Object.entries(d)) if (!(k in fields) && k !== 'device' && k !== 'message') fields[k] = v;
  return fields;
}

export function eventLevel(ev: VolumeEvent): Level {
  if (ev.kind === 'write-held') return ev.data.heldCount === 1 ? 'warn' : 'debug'; // the first hold matters, not each
  return EVENT_LEVELS[ev.kind] ?? 'info';
}

/** One line per volume event. */
export function logVolumeEvent(log: EventLog, ev: VolumeEvent): void {
  const fields = eventLogFields(ev);
  const msg = `${ev.volume}: ${ev.kind}${fields.leg !== undefined ? ` leg ${String(fields.leg)}` : ''}${fields.reason !== undefined ? ` (${String(fields.reason)})` : ''}`;
  switch (eventLevel(ev)) {
    case 'error':
      (log.error ?? log.warn).call(log, fields, msg);
      return;
    case 'warn':
      log.warn(fields, msg);
      return;
    case 'debug':
      log.debug?.(fields, msg);
      return;
    default:
      log.info(fields, msg);
  }
}
