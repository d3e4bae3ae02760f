// Where the control socket lives by default and how a bearer token file is read: what both sides of the
// control socket agree on, without the HTTP client (client.ts) or server (server.ts) behind it, so that
// `serve` can name its socket and check its tokens before either is loaded (start-up time is resync time).
import { readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { UsageError } from './usage-error.js';

/** Shortest bearer token the control API over TCP accepts (shorter ones are refused: guessable). */
export const CONTROL_TOKEN_CHARS_MIN = 16;

/** Where the server puts its socket when --control is not given: one directory, one socket per pid. */
export function defaultControlDir(): string {
  const xdg = process.env.XDG_RUNTIME_DIR;
  if (xdg !== undefined && xdg.length > 0) return join(xdg, 'nbd-mirror');
  if (process.getuid?.() === 0) return '/run/nbd-mirror';
  return join(tmpdir(), `nbd-mirror-${process.getuid?.() ?? 'user'}`);
}

export function defaultControlPath(pid = process.pid): string {
  return join(defaultControlDir(), `${pid}.sock`);
}

export function readToken(file: string): string {
  let text: string;
  try {
    text = readFileSync(file, 'utf8').trim();
  } catch (e) {
    throw new UsageError(`cannot read token file ${file}: ${(e as Error).message}`);
  }
  if (text.length === 0) throw new UsageError(`token file ${file} is empty`);
  return text;
}
