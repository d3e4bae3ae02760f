// Pure parts: --allow rule parsing and decisions, DN normalization, psktool file parsing, key file
// mode checks, serve flag validation (each refusal names the flag or file).
import { chmodSync, mkdtempSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ExportPolicy, normalizeDn, parseAllowSpec, type PeerIdentity } from '../../src/nbd/server/authz.js';
import { checkKeyFileMode, loadServerTls, parsePskText } from '../../src/nbd/tls/config.js';
import { serveServerOptions } from '../../src/control/serve-tls.js';
import { CapturingLogger } from './harness.js';

const dir = mkdtempSync(join(tmpdir(), 'nbd-tls-unit-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('allow rules', () => {
  it('parses each kind and refuses malformed rules with the reason', () => {
    expect(parseAllowSpec('disk=psk:alice').rule).toEqual({ kind: 'psk', identity: 'alice' });
    expect(parseAllowSpec('disk=dn:O=x, CN=a').rule).toEqual({ kind: 'dn', subject: 'CN=a,O=x' });
    expect(parseAllowSpec('disk=uid:1000').rule).toEqual({ kind: 'uid', uid: 1000 });
    expect(parseAllowSpec('a=b=addr:10.0.0.0/8').exportName).toBe('a=b'); // the name ends at the first =KIND:
    expect(() => parseAllowSpec('disk')).toThrow(/expected EXPORT=/);
    expect(() => parseAllowSpec('disk=who:x')).toThrow(/unknown kind "who"/);
    expect(() => parseAllowSpec('disk=uid:-1')).toThrow(/uid: expects a number/);
    expect(() => parseAllowSpec('disk=addr:10.0.0.0/33')).toThrow(/bad prefix length/);
    expect(() => parseAllowSpec('disk=addr:example.com')).toThrow(/not an IP address/);
    expect(() => parseAllowSpec('disk=psk:')).toThrow(/empty psk: value/);
  });

  it('decides: restricted exports admit only matching peers; others are open', () => {
    const p = new ExportPolicy(['a=psk:alice', 'a=addr:10.1.0.0/16', 'b=dn:CN=alice,O=org', 'c=uid:1000'].map(parseAllowSpec));
    const tlsPsk = (id: string): PeerIdentity => ({ transport: 'unix', tls: true, pskIdentity: id });
    expect(p.check('a', tlsPsk('alice'))).toBeNull();
    expect(p.check('a', tlsPsk('bob'))).toMatch(/psk identity "bob" matches none of psk:alice addr:10.1.0.0\/16/);
    expect(p.check('a', { transport: 'tcp', address: '::ffff:10.1.2.3', tls: false })).toBeNull();
    expect(p.check('a', { transport: 'tcp', address: '10.2.0.1', tls: false })).not.toBeNull();
    expect(p.check('b', { transport: 'tcp', address: '1.2.3.4', tls: true, certSubject: normalizeDn('O=org\nCN=alice') })).toBeNull();
    expect(p.check('b', { transport: 'tcp', address: '1.2.3.4', tls: true, certSubject: normalizeDn('CN=alice') })).not.toBeNull();
    expect(p.check('c', { transport: 'unix', tls: false })).toMatch(/uid unknown/); // fail closed without SO_PEERCRED
    expect(p.check('c', { transport: 'unix', tls: false, uid: 1000 })).toBeNull();
    expect(p.check('open', { transport: 'unix', tls: false })).toBeNull();
  });
});

describe('key material', () => {
  it('parses psktool files; refuses bad lines naming the line', () => {
    const keys = parsePskText('# comment\nalice:00ff\n\nbob:0a0b0c\n', 'f');
    expect([...keys.keys()]).toEqual(['alice', 'bob']);
    expect(keys.get('alice')).toEqual(Buffer.from([0, 255]));
    expect(() => parsePskText('alice:0g', 'f')).toThrow(/f line 1: key is not an even number of hex digits/);
    expect(() => parsePskText('nocolon', 'f')).toThrow(/line 1: expected identity:hexkey/);
    expect(() => parsePskText('a:00\na:01', 'f')).toThrow(/line 2: identity "a" given twice/);
    expect(() => parsePskText('\n', 'f')).toThrow(/no identity:hexkey lines/);
  });

  it('refuses key files readable by group or others, and missing ones', () => {
    const f = join(dir, 'k.psk');
    writeFileSync(f, 'a:00\n');
    chmodSync(f, 0o640);
    expect(() => checkKeyFileMode(f, 'PSK file')).toThrow(/readable by group or others \(mode 0640\); run chmod 600/);
    chmodSync(f, 0o600);
    expect(() => checkKeyFileMode(f, 'PSK file')).not.toThrow();
    expect(() => checkKeyFileMode(join(dir, 'none'), 'server key')).toThrow(/no such file/);
    const certs = join(dir, 'certs');
    mkdirSync(certs);
    writeFileSync(join(certs, 'server-key.pem'), 'x', { mode: 0o644 });
    expect(() => loadServerTls({ mode: 'require', certificatesDir: certs, verifyPeer: false })).toThrow(/server key .*server-key.pem: readable by group/);
  });

  it('serve flags: contradictions are usage errors naming the flag', () => {
    const f = join(dir, 'ok.psk');
    writeFileSync(f, 'alice:00112233\n', { mode: 0o600 });
    const log = new CapturingLogger();
    const base = { tls: 'off' as const, tlsVerifyPeer: false, allow: [] as string[] };
    expect(() => serveServerOptions({ ...base, tls: 'require' }, ['d'], log)).toThrow(/--tls require needs --tls-certificates DIR or --tls-psk FILE/);
    expect(() => serveServerOptions({ ...base, tlsPsk: f }, ['d'], log)).toThrow(/given with --tls off/);
    expect(() => serveServerOptions({ ...base, allow: ['d=psk:alice'] }, ['d'], log)).toThrow(/needs --tls on or --tls require/);
    expect(() => serveServerOptions({ ...base, tls: 'on', tlsPsk: f, allow: ['x=psk:alice'] }, ['d'], log)).toThrow(/no export named "x"/);
    expect(() => serveServerOptions({ ...base, connectionsMax: '0' }, ['d'], log)).toThrow(/--connections-max 0: expected a positive integer/);
    const o = serveServerOptions({ ...base, tls: 'require', tlsPsk: f, allow: ['d=psk:zed'], handshakeTimeoutMs: '5000' }, ['d'], log);
    expect(o.tls?.mode).toBe('require');
    expect(o.limits.handshakeTimeoutMs).toBe(5000);
    expect(log.find(/not in the PSK file/).length).toBe(1);
  });
});
