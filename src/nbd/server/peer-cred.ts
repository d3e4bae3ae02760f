// The uid of the process on the other end of an accepted unix socket (SO_PEERCRED), for `uid:` allow
// rules and the per-peer connection limit. Node has no API for it, so it comes from an optional tiny
// N-API addon, native/peercred/ (build: node-gyp rebuild --directory=native/peercred --nodedir=/usr;
// NBDM_PEERCRED_ADDON=PATH overrides where it is looked for; NBDM_NO_PEERCRED=1 disables it). Without
// the addon peerUid() returns undefined: uid: rules then match nobody (fail closed) and unix clients
// are not counted per peer. peerCredAvailable() says which case we are in (serve logs it).

import type { Socket } from 'node:net';
import { loadOptionalAddon } from '../../native-addon.js';

interface PeerCredAddon {
  peerCred(fd: number): { pid: number; uid: number; gid: number };
}

let addon: PeerCredAddon | null | undefined;

function load(): PeerCredAddon | null {
  if (addon !== undefined) return addon;
  addon = null;
  if (process.env.NBDM_NO_PEERCRED === '1') return addon;
  addon = loadOptionalAddon<PeerCredAddon>(import.meta.url, ['peercred', 'build', 'Release', 'nbdm_peercred.node'], process.env.NBDM_PEERCRED_ADDON);
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
