// Is a unix socket file live? Asked before a listener replaces a socket file left behind by a dead process.
import { connect } from 'node:net';

/** A probe that neither connects nor fails by then counts as a live (busy) server. */
const SOCKET_PROBE_TIMEOUT_MS = 1000;

/** True when something accepts connections on `path`; never true for a dead socket file. */
export function socketAccepts(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(path);
    // A connect that neither succeeds nor fails in time: assume a live but busy server, never unlink it.
    const timer = setTimeout(() => done(true), SOCKET_PROBE_TIMEOUT_MS);
    function done(v: boolean): void {
      clearTimeout(timer);
      s.destroy();
      resolve(v);
    }
    s.once('connect', () => done(true));
    s.once('error', () => done(false));
  });
}
