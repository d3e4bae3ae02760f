// The uid of the process on the other end of an accepted unix socket (SO_PEERCRED), for `uid:` allow
// rules and the per-peer connection limit. Node has no API for it, so it comes from an optional tiny
// N-API addon, native/peercred/ (build: node-gyp rebuild --directory=native/peercred --nodedir=/usr;
// NBDM_PEERCRED_ADDON=PATH overrides where it is looked for; NBDM_NO_PEERCRED=1 disables it). Without
// the addon peerUid() returns undefined: uid: rules then match nobody (fail closed) and unix clients
// are not counted per peer. peerCredAvailable() says which case we are in (serve logs it).

import { createRequire } from 'node:module';
import type { Socket } from 'node:net';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';

interface PeerCredAddon {
  peerCred(fd: number): { pid: number; uid: number; gid: number };
}

let addon: PeerCredAddon | null | undefined;

function load(): PeerCredAddon | null {
  if (addon !== undefined) return addon;
  addon = null;
  if (process.env.NBDM_NO_PEERCRED === '1') return addon;
  const require = createRequire(import.meta.url);
  const candidates: string[] = [];
  if (process.env.NBDM_PEERCRED_ADDON !== undefined) candidates.push(process.env.NBDM_PEERCRED_ADDON);
  // src/nbd/server, dist/nbd/server or a private build under .cache/e2e/<hash>/dist: walk up to the repository.
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 8; i++) {
    candidates.push(join(dir, 'native', 'peercred', 'build', 'Release', 'nbdm_peercred.node'));
    dir = dirname(dir);
  }
  for (const path of candidates) {
    try {
      addon = require(path) as PeerCredAddon;
      break;
    } catch {
      // not built there; try the next location
    }
  }
  return addon;
}

export function peerCredAvailable(): boolean {
  return load() !== null;
}

/** The peer's uid, or undefined when it cannot be learned. Never throws. */
export function peerUid(socket: Socket): number | undefined {
  const a = load();
  if (a === null) return undefined;
  const fd = (socket as unknown as { _handle?: { fd?: number } })._handle?.fd;
  if (typeof fd !== 'number' || fd < 0) return undefined;
  try {
    return a.peerCred(fd).uid;
  } catch {
    return undefined;
  }
}
