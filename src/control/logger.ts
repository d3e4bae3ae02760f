// The process logger: pino, JSON lines on stderr (stdout carries only the human "listening on / connect
// with" text). Synchronous writes so the last lines before an exit are not lost.
import pino from 'pino';

export type LogLevel = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';
export const LOG_LEVELS: readonly LogLevel[] = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];

export function createLogger(level: LogLevel): pino.Logger {
  return pino({ name: 'nbd-mirror', level }, pino.destination({ dest: 2, sync: true }));
}
