// ControlClient: the CLI's side of the control socket. Resolves where the server is (`--control PATH`,
// env NBD_MIRROR_CONTROL, or the single live socket in the default directory), sends one HTTP/JSON
// request, and turns an {error} answer back into a ControlError with the server's code and message.
// Also: the event stream. The default control socket path both sides agree on: control-path.ts.
import { readdirSync } from 'node:fs';
import { request, type RequestOptions } from 'node:http';
import { join } from 'node:path';
import type { WebSocket } from 'ws';
import { ControlError, isControlErrorCode } from './control-error.js';
import { defaultControlDir, readToken } from './control-path.js';
import { UsageError } from './usage-error.js';

export { defaultControlDir, defaultControlPath, readToken } from './control-path.js';

export const CONTROL_ENV = 'NBD_MIRROR_CONTROL';
export const CONTROL_TOKEN_FILE_ENV = 'NBD_MIRROR_CONTROL_TOKEN_FILE';
/** Largest answer the client reads (a status of many volumes is a few KiB). */
export const CONTROL_ANSWER_BYTES_MAX = 4 * 1024 * 1024;

export type ControlTarget =
  | { readonly kind: 'unix'; readonly path: string }
  | { readonly kind: 'tcp'; readonly host: string; readonly port: number; readonly token: string };

/**
 * `--control` value (or env): a socket path, or tcp://127.0.0.1:PORT (token from --control-token-file or
 * env NBD_MIRROR_CONTROL_TOKEN_FILE). Without either: the only *.sock in the default directory.
 */
export function resolveControlTarget(opts: { control?: string; controlTokenFile?: string }): ControlTarget {
  const given = opts.control ?? process.env[CONTROL_ENV];
  if (given !== undefined && given.length > 0) {
    const m = /^tcp:\/\/(127\.0\.0\.1|localhost):([0-9]{1,5})\/?$/.exec(given);
    if (m !== null) {
      const tokenFile = opts.controlTokenFile ?? process.env[CONTROL_TOKEN_FILE_ENV];
      if (tokenFile === undefined) throw new UsageError(`--control ${given}: a TCP control address needs --control-token-file FILE`);
      return { kind: 'tcp', host: '127.0.0.1', port: Number(m[2]), token: readToken(tokenFile) };
    }
    if (given.startsWith('tcp:')) throw new UsageError(`--control ${given}: expected tcp://127.0.0.1:PORT (only the loopback address is served)`);
    return { kind: 'unix', path: given };
  }
  const dir = defaultControlDir();
  let sockets: string[] = [];
  try {
    sockets = readdirSync(dir).filter((f) => f.endsWith('.sock'));
  } catch {
    // no directory: no server
  }
  if (sockets.length === 1) return { kind: 'unix', path: join(dir, sockets[0]!) };
  if (sockets.length === 0) {
    throw new UsageError(`no control socket found in ${dir}: is \`nbd-mirror serve\` running? Give --control PATH or set ${CONTROL_ENV}`);
  }
  throw new UsageError(`${sockets.length} control sockets in ${dir} (${sockets.join(', ')}): choose one with --control PATH or ${CONTROL_ENV}`);
}

export class ControlClient {
  constructor(readonly target: ControlTarget) {}

  get<T>(path: string): Promise<T> {
    return this.call<T>('GET', path, undefined);
  }
  post<T>(path: string, body: object = {}): Promise<T> {
    return this.call<T>('POST', path, body);
  }

  call<T>(method: string, path: string, body: object | undefined): Promise<T> {
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    const options: RequestOptions = {
      method,
      path,
      headers: {
        ...(payload ? { 'content-type': 'application/json', 'content-length': payload.length } : {}),
        ...this.authHeader(),
      },
      ...(this.target.kind === 'unix' ? { socketPath: this.target.path } : { host: this.target.host, port: this.target.port }),
    };
    return new Promise<T>((resolve, reject) => {
      const req = request(options, (res) => {
        const chunks: Buffer[] = [];
        let total = 0;
        res.on('data', (c: Buffer) => {
          total += c.length;
          if (total > CONTROL_ANSWER_BYTES_MAX) {
            req.destroy(new ControlError('EIO', `control answer above ${CONTROL_ANSWER_BYTES_MAX} bytes`));
            return;
          }
          chunks.push(c);
        });
        res.on('end', () => {
          let parsed: unknown;
          try {
            parsed = JSON.parse(Buffer.concat(chunks).toString('utf8'));
          } catch {
            reject(new ControlError('EIO', `control server sent a non-JSON answer (HTTP ${res.statusCode})`));
            return;
          }
          const err = (parsed as { error?: { code?: unknown; message?: unknown } }).error;
          if ((res.statusCode ?? 500) >= 400 || err !== undefined) {
            const code = isControlErrorCode(err?.code) ? err.code : 'EIO';
            reject(new ControlError(code, typeof err?.message === 'string' ? err.message : `HTTP ${res.statusCode}`));
            return;
          }
          resolve(parsed as T);
        });
        res.on('error', reject);
      });
      req.on('error', (e) => reject(e instanceof ControlError ? e : new ControlError('EIO', `cannot reach the control socket ${this.describe()}: ${e.message}`)));
      if (payload) req.write(payload);
      req.end();
    });
  }

  /** Open the event stream; `onEvent` gets each parsed message. Resolves when the hello arrived. */
  async events(volume: string | undefined, onEvent: (ev: Record<string, unknown>) => void): Promise<WebSocket> {
    const { WebSocket } = await import('ws'); // here, not at start-up: only `events` and `verify` stream
    const query = volume === undefined ? '' : `?volume=${encodeURIComponent(volume)}`;
    const url =
      this.target.kind === 'unix'
        ? `ws+unix://${this.target.path}:/v1/events${query}`
        : `ws://${this.target.host}:${this.target.port}/v1/events${query}`;
    const ws = new WebSocket(url, { headers: this.authHeader() });
    return new Promise((resolve, reject) => {
      let first = true;
      ws.on('message', (data) => {
        let ev: Record<string, unknown>;
        try {
          ev = JSON.parse(String(data)) as Record<string, unknown>;
        } catch {
          return;
        }
        onEvent(ev);
        if (first) {
          first = false;
          resolve(ws);
        }
      });
      ws.on('error', (e) => reject(new ControlError('EIO', `event stream ${this.describe()}: ${e.message}`)));
    });
  }

  describe(): string {
    return this.target.kind === 'unix' ? this.target.path : `tcp://${this.target.host}:${this.target.port}`;
  }

  private authHeader(): Record<string, string> {
    return this.target.kind === 'tcp' ? { authorization: `Bearer ${this.target.token}` } : {};
  }
}
