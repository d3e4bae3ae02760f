// Per-export authorization: who may open an export (`serve --allow EXPORT=KIND:VALUE`, repeatable).
// Owns: parsing allow rules (pure), the peer's identity as the connection learns it, and the decision.
// An export with no rule is open to every client that got through the handshake (and TLS, if required);
// an export with rules admits a peer that matches at least one of them and nobody else.
//
//   psk:IDENTITY   the TLS-PSK identity the client proved
//   dn:SUBJECT     the subject DN of the client certificate (verified against the CA: needs
//                  --tls-verify-peer); compared as a set of RDNs, order and spaces ignored,
//                  e.g. dn:CN=alice,O=Example
//   uid:N          the uid of the process on the other end of a unix socket, when the platform gives
//                  it (peer-cred.ts); where it cannot be learned, uid: rules match nobody (fail closed)
//   addr:CIDR      the TCP peer address, e.g. addr:10.0.0.0/8, addr:127.0.0.1, addr:::1/128
//
// The decision returns the reason a peer was refused, for the log line; the client only sees
// NBD_REP_ERR_POLICY. LIST shows only exports the peer could open (names do not leak).

import { BlockList, isIP } from 'node:net';

export type AllowRule =
  | { readonly kind: 'psk'; readonly identity: string }
  | { readonly kind: 'dn'; readonly subject: string }
  | { readonly kind: 'uid'; readonly uid: number }
  | { readonly kind: 'addr'; readonly cidr: string; readonly list: BlockList };

export interface AllowSpec {
  readonly exportName: string;
  readonly rule: AllowRule;
}

export class AllowRuleError extends Error {
  readonly code = 'ERR_NBD_ALLOW_RULE';
  constructor(text: string, reason: string) {
    super(`--allow ${text}: ${reason}`);
    this.name = 'AllowRuleError';
  }
}

/** What the server knows about the other end; filled in as the connection goes (TLS comes later). */
export interface PeerIdentity {
  readonly transport: 'tcp' | 'unix';
  /** TCP: the remote IP address (IPv4-mapped IPv6 shown as IPv4). */
  readonly address?: string;
  /** unix: the peer process's uid, if the platform tells us. */
  uid?: number;
  tls: boolean;
  pskIdentity?: string;
  /** Verified client certificate subject, normalized (normalizeDn). */
  certSubject?: string;
}

/** "CN=a, O=b" or "O=b\nCN=a" -> "cn=a,o=b"-style canonical string: RDNs sorted, keys upper-cased, spaces trimmed. */
export function normalizeDn(dn: string): string {
  const parts = dn
    .split(/[,\n]/)
    .map((p) => p.trim())
    .filter((p) => p !== '')
    .map((p) => {
      const eq = p.indexOf('=');
      return eq < 0 ? p : `${p.slice(0, eq).trim().toUpperCase()}=${p.slice(eq + 1).trim()}`;
    });
  parts.sort();
  return parts.join(',');
}

function mappedV4(address: string): string {
  const m = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  return m === null ? address : m[1]!;
}

/** Parse `EXPORT=KIND:VALUE`. Pure; throws AllowRuleError naming the problem. */
export function parseAllowSpec(text: string): AllowSpec {
  // The export name ends at the first "=KIND:" (names may contain "=", dn values do too).
  const m = /^(.*?)=(psk|dn|uid|addr):/s.exec(text);
  const eq = m === null ? text.indexOf('=') : m[1]!.length;
  if (eq < 0) throw new AllowRuleError(text, 'expected EXPORT=psk:IDENTITY|dn:SUBJECT|uid:N|addr:CIDR');
  const exportName = text.slice(0, eq);
  const rest = text.slice(eq + 1);
  const colon = rest.indexOf(':');
  if (colon < 0) throw new AllowRuleError(text, 'expected KIND:VALUE after "=" (psk:, dn:, uid:, addr:)');
  const kind = rest.slice(0, colon);
  const value = rest.slice(colon + 1);
  if (value === '') throw new AllowRuleError(text, `empty ${kind}: value`);
  switch (kind) {
    case 'psk':
      return { exportName, rule: { kind: 'psk', identity: value } };
    case 'dn':
      if (!value.includes('=')) throw new AllowRuleError(text, 'dn: expects a subject like CN=name,O=org');
      return { exportName, rule: { kind: 'dn', subject: normalizeDn(value) } };
    case 'uid':
      if (!/^[0-9]{1,10}$/.test(value) || Number(value) > 0xffffffff) throw new AllowRuleError(text, 'uid: expects a number');
      return { exportName, rule: { kind: 'uid', uid: Number(value) } };
    case 'addr': {
      const slash = value.indexOf('/');
      const ip = mappedV4(slash < 0 ? value : value.slice(0, slash));
      const family = isIP(ip);
      if (family === 0) throw new AllowRuleError(text, `addr: "${ip}" is not an IP address`);
      const bits = family === 4 ? 32 : 128;
      const prefixText = slash < 0 ? String(bits) : value.slice(slash + 1);
      if (!/^[0-9]{1,3}$/.test(prefixText) || Number(prefixText) > bits) throw new AllowRuleError(text, `addr: bad prefix length "${prefixText}"`);
      const list = new BlockList();
      list.addSubnet(ip, Number(prefixText), family === 4 ? 'ipv4' : 'ipv6');
      return { exportName, rule: { kind: 'addr', cidr: `${ip}/${prefixText}`, list } };
    }
    default:
      throw new AllowRuleError(text, `unknown kind "${kind}" (psk, dn, uid, addr)`);
  }
}

export function formatRule(r: AllowRule): string {
  switch (r.kind) {
    case 'psk':
      return `psk:${r.identity}`;
    case 'dn':
      return `dn:${r.subject}`;
    case 'uid':
      return `uid:${r.uid}`;
    case 'addr':
      return `addr:${r.cidr}`;
  }
}

function matches(r: AllowRule, peer: PeerIdentity): boolean {
  switch (r.kind) {
    case 'psk':
      return peer.tls && peer.pskIdentity === r.identity;
    case 'dn':
      return peer.tls && peer.certSubject !== undefined && peer.certSubject === r.subject;
    case 'uid':
      return peer.transport === 'unix' && peer.uid !== undefined && peer.uid === r.uid;
    case 'addr': {
      if (peer.transport !== 'tcp' || peer.address === undefined) return false;
      const a = mappedV4(peer.address);
      const family = isIP(a);
      return family !== 0 && r.list.check(a, family === 4 ? 'ipv4' : 'ipv6');
    }
  }
}

/** Who the peer is, in words, for log lines. */
export function describePeer(peer: PeerIdentity): string {
  const parts: string[] = [];
  if (peer.transport === 'tcp') parts.push(`addr ${peer.address ?? '?'}`);
  else parts.push(peer.uid === undefined ? 'unix socket (uid unknown)' : `unix uid ${peer.uid}`);
  if (!peer.tls) parts.push('no TLS');
  if (peer.pskIdentity !== undefined) parts.push(`psk identity "${peer.pskIdentity}"`);
  if (peer.certSubject !== undefined) parts.push(`certificate "${peer.certSubject}"`);
  return parts.join(', ');
}

/** The rules of all exports. Exports without rules are open. */
export class ExportPolicy {
  private readonly rules = new Map<string, AllowRule[]>();

  constructor(specs: readonly AllowSpec[] = []) {
    for (const s of specs) {
      const list = this.rules.get(s.exportName) ?? [];
      list.push(s.rule);
      this.rules.set(s.exportName, list);
    }
  }

  get restrictedExports(): readonly string[] {
    return [...this.rules.keys()];
  }

  /** True if some rule needs a verified client certificate. */
  get usesDn(): boolean {
    return [...this.rules.values()].some((l) => l.some((r) => r.kind === 'dn'));
  }

  get usesUid(): boolean {
    return [...this.rules.values()].some((l) => l.some((r) => r.kind === 'uid'));
  }

  /** null if `peer` may open `exportName` (the resolved name, never ""); else why not. */
  check(exportName: string, peer: PeerIdentity): string | null {
    const list = this.rules.get(exportName);
    if (list === undefined) return null;
    if (list.some((r) => matches(r, peer))) return null;
    return `${describePeer(peer)} matches none of ${list.map(formatRule).join(' ')}`;
  }
}
