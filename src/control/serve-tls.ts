// `serve` flags for TLS, per-export authorization and the NBD server's hostile-client limits, and how
// they become NbdServer options. Owns flag validation (UsageError naming the flag) and key reloads
// (SIGHUP and `nbd-mirror message NAME reload-tls`): a reload that fails keeps the old keys.
//
//   --tls off|on|require        nbdkit's words: off = no STARTTLS; on = offered, plaintext allowed;
//                               require = every option before STARTTLS but ABORT gets NBD_REP_ERR_TLS_REQD
//   --tls-certificates DIR      ca-cert.pem, server-cert.pem, server-key.pem (nbdkit/qemu layout)
//   --tls-psk FILE              psktool identity:hexkey lines (takes priority, as in nbdkit)
//   --tls-verify-peer           X.509: require a client certificate signed by ca-cert.pem
//   --allow EXPORT=psk:ID|dn:SUBJECT|uid:N|addr:CIDR   (repeatable; see src/nbd/server/authz.ts)
//   --connections-max N, --connections-per-peer-max N, --handshake-timeout-ms N, --option-bytes-max N,
//   --in-flight-requests-max N, --in-flight-bytes-max N   (src/nbd/server/limits.ts)
//   --poll-max-us N             spin up to N us for an idle connection's next request (0: off; default: env
//                               NBD_MIRROR_POLL_MAX_US, else 32; src/nbd/server/idle-poll.ts)
// Also the connect hints `serve` prints under --tls on|require (serveConnectHints): nbds:// URIs with the
// tls-psk-file= / tls-certificates= parameters and the PSK identity a client needs.
import { basename, dirname, join } from 'node:path';
import { type Command, Option } from 'commander';
import { formatNbdUri, type NbdUri, type NbdUriTls } from '../nbd/uri.js';
import { connectHints } from './connect-hints.js';
import type { ListenAddress } from './listen-address.js';
import { AllowRuleError, ExportPolicy, parseAllowSpec, type AllowSpec } from '../nbd/server/authz.js';
import type { Logger } from '../nbd/server/log.js';
import { peerCredAvailable } from '../nbd/server/peer-cred.js';
import { DEFAULT_SERVER_LIMITS, type ServerLimits } from '../nbd/server/limits.js';
import { POLL_MAX_US_LIMIT, resolveLimits } from '../nbd/server/limits.js';
import { TLS_MODES, TlsConfigError, type TlsMode } from '../nbd/tls/config.js';
import { ServerTls } from '../nbd/tls/server-tls.js';
import { OLD_TLS_SEND_BUFFER_ENV, SEND_BUFFER_BYTES_MAX, SEND_BUFFER_ENV } from '../nbd/server/send-buffer.js';
import { ControlError } from './control-error.js';
import { UsageError } from './usage-error.js';

export interface ServeTlsFlags {
  tls: TlsMode;
  tlsCertificates?: string;
  tlsPsk?: string;
  tlsVerifyPeer: boolean;
  allow: string[];
  connectionsMax?: string;
  connectionsPerPeerMax?: string;
  handshakeTimeoutMs?: string;
  optionBytesMax?: string;
  inFlightRequestsMax?: string;
  inFlightBytesMax?: string;
  pollMaxUs?: string;
  sendBufferBytes?: string;
}

export const POLL_MAX_US_ENV = 'NBD_MIRROR_POLL_MAX_US';

const collect = (value: string, previous: string[]): string[] => [...previous, value];

/** Flag name -> ServerLimits key. */
interface LimitFlag {
  readonly key: keyof ServeTlsFlags & string;
  readonly flag: string;
  readonly limit: keyof ServerLimits;
  /** 0 is allowed (it turns the feature off). */
  readonly zeroOk?: boolean;
  /** Environment variable read when the flag is not given. */
  readonly env?: string;
  /** Largest value accepted (checked here too, so that the error names the flag or variable). */
  readonly max?: number;
}
const LIMIT_FLAGS: readonly LimitFlag[] = [
  { key: 'connectionsMax', flag: '--connections-max', limit: 'connectionsMax' },
  { key: 'connectionsPerPeerMax', flag: '--connections-per-peer-max', limit: 'connectionsPerPeerMax' },
  { key: 'handshakeTimeoutMs', flag: '--handshake-timeout-ms', limit: 'handshakeTimeoutMs' },
  { key: 'optionBytesMax', flag: '--option-bytes-max', limit: 'optionBytesMax' },
  { key: 'inFlightRequestsMax', flag: '--in-flight-requests-max', limit: 'inFlightRequestsMax' },
  { key: 'inFlightBytesMax', flag: '--in-flight-bytes-max', limit: 'inFlightBytesMax' },
  { key: 'pollMaxUs', flag: '--poll-max-us', limit: 'pollMaxUs', zeroOk: true, env: POLL_MAX_US_ENV, max: POLL_MAX_US_LIMIT },
  { key: 'sendBufferBytes', flag: '--send-buffer-bytes', limit: 'sendBufferBytes', zeroOk: true, env: SEND_BUFFER_ENV, max: SEND_BUFFER_BYTES_MAX },
];

export function addServeTlsOptions(cmd: Command): Command {
  cmd
    .addOption(new Option('--tls <mode>', 'STARTTLS: off, on (offered) or require').choices(TLS_MODES).default('off'))
    .option('--tls-certificates <dir>', 'X.509: directory with ca-cert.pem, server-cert.pem, server-key.pem')
    .option('--tls-psk <file>', 'TLS-PSK: psktool file of identity:hexkey lines')
    .option('--tls-verify-peer', 'X.509: require a client certificate signed by ca-cert.pem', false)
    .option('--allow <rule>', 'EXPORT=psk:IDENTITY|dn:SUBJECT|uid:N|addr:CIDR; an export with rules refuses everyone else (repeatable)', collect, []);
  const d = DEFAULT_SERVER_LIMITS;
  cmd
    .option('--connections-max <n>', `open NBD connections in total (default ${d.connectionsMax})`)
    .option('--connections-per-peer-max <n>', `open NBD connections per client address / uid (default ${d.connectionsPerPeerMax})`)
    .option('--handshake-timeout-ms <ms>', `time from accept to the end of the handshake, TLS included (default ${d.handshakeTimeoutMs})`)
    .option('--option-bytes-max <n>', `largest handshake option accepted (default ${d.optionBytesMax})`)
    .option('--in-flight-requests-max <n>', `requests served at once per connection (default ${d.inFlightRequestsMax})`)
    .option('--in-flight-bytes-max <n>', `payload bytes held per connection (default ${d.inFlightBytesMax})`)
    .option('--poll-max-us <us>', `spin up to this long for an idle connection's next request, qemu-style adaptive polling; 0: off (default env ${POLL_MAX_US_ENV}, else ${d.pollMaxUs})`)
    .option(
      '--send-buffer-bytes <n>',
      `socket send buffer asked for on each unix-socket connection (the kernel doubles it, capped by net.core.wmem_max; TCP autotunes); 0: system default (default env ${SEND_BUFFER_ENV}, else ${d.sendBufferBytes})`,
    );
  return cmd;
}

export interface ServeServerOptions {
  readonly tls?: ServerTls;
  readonly policy?: ExportPolicy;
  readonly limits: ServerLimits;
}

/** Validate the flags and read the key material (UsageError naming the flag or file). */
export function serveServerOptions(flags: ServeTlsFlags, exportNames: readonly string[], log: Logger): ServeServerOptions {
  if (process.env[OLD_TLS_SEND_BUFFER_ENV] !== undefined) {
    throw new UsageError(`${OLD_TLS_SEND_BUFFER_ENV} was renamed ${SEND_BUFFER_ENV} (it now applies to every unix-socket connection, TLS or not): set that instead`);
  }
  const partial: Partial<Record<keyof ServerLimits, number>> = {};
  for (const { key, flag, limit, zeroOk = false, env, max } of LIMIT_FLAGS) {
    let v = flags[key];
    let from = flag;
    if (v === undefined && env !== undefined && process.env[env]) {
      v = process.env[env];
      from = `${env}=`;
    }
    if (v === undefined) continue;
    if (typeof v !== 'string' || !/^[0-9]+$/.test(v) || !Number.isSafeInteger(Number(v)) || (!zeroOk && Number(v) <= 0) || (max !== undefined && Number(v) > max)) {
      const range = max === undefined ? '' : ` up to ${max}`;
      throw new UsageError(`${from}${from.endsWith('=') ? '' : ' '}${String(v)}: expected a ${zeroOk ? 'non-negative' : 'positive'} integer${range}`);
    }
    partial[limit] = Number(v);
  }
  let limits: ServerLimits;
  try {
    limits = resolveLimits(partial);
  } catch (e) {
    throw new UsageError((e as Error).message);
  }

  let tls: ServerTls | undefined;
  const mode = flags.tls ?? 'off';
  if (mode !== 'off' || flags.tlsCertificates !== undefined || flags.tlsPsk !== undefined || flags.tlsVerifyPeer) {
    try {
      tls = new ServerTls(
        {
          mode,
          verifyPeer: flags.tlsVerifyPeer ?? false,
          ...(flags.tlsCertificates !== undefined && flags.tlsPsk === undefined ? { certificatesDir: flags.tlsCertificates } : {}),
          ...(flags.tlsPsk !== undefined ? { pskFile: flags.tlsPsk } : {}),
        },
        log,
      );
    } catch (e) {
      if (e instanceof TlsConfigError) throw new UsageError(e.message);
      throw e;
    }
    if (mode === 'off') tls = undefined; // unreachable: checkServerTlsSettings refuses key flags with off
  }

  let policy: ExportPolicy | undefined;
  const rules = flags.allow ?? [];
  if (rules.length > 0) {
    const specs: AllowSpec[] = [];
    for (const text of rules) {
      try {
        specs.push(parseAllowSpec(text));
      } catch (e) {
        if (e instanceof AllowRuleError) throw new UsageError(e.message);
        throw e;
      }
    }
    for (const s of specs) {
      if (!exportNames.includes(s.exportName)) {
        throw new UsageError(`--allow ${s.exportName}=...: no export named "${s.exportName}" (exports: ${exportNames.join(', ')})`);
      }
      if ((s.rule.kind === 'psk' || s.rule.kind === 'dn') && tls === undefined) {
        throw new UsageError(`--allow ${s.exportName}=${s.rule.kind}:...: needs --tls on or --tls require`);
      }
      if (s.rule.kind === 'psk' && tls?.kind !== 'psk') throw new UsageError(`--allow ${s.exportName}=psk:...: needs --tls-psk FILE`);
      if (s.rule.kind === 'dn' && (tls?.kind !== 'x509' || !flags.tlsVerifyPeer)) {
        throw new UsageError(`--allow ${s.exportName}=dn:...: needs --tls-certificates DIR and --tls-verify-peer`);
      }
      if (s.rule.kind === 'psk' && !tls!.pskIdentities().includes(s.rule.identity)) {
        log.warn({ export: s.exportName, identity: s.rule.identity }, '--allow names a PSK identity that is not in the PSK file (yet)');
      }
    }
    policy = new ExportPolicy(specs);
    if (policy.usesUid && !peerCredAvailable()) {
      log.warn({}, '--allow uid: rules match nobody: the peer-credentials addon (native/peercred) is not built, so unix peer uids are unknown');
    }
  }
  return { ...(tls !== undefined ? { tls } : {}), ...(policy !== undefined ? { policy } : {}), limits };
}

/** SIGHUP / reload-tls: re-read the keys; the answer line, or an error naming the problem. */
export function reloadTls(tls: ServerTls | undefined, log: Logger): string {
  if (tls === undefined) throw new ControlError('EINVAL', 'reload-tls: TLS is off (serve --tls on|require): nothing to reload');
  try {
    return tls.reload();
  } catch (e) {
    log.error({ err: (e as Error).message }, 'TLS key reload failed: keeping the old keys');
    throw new ControlError('EINVAL', `reload-tls: ${(e as Error).message} (the old keys stay in use)`);
  }
}

function shellQuote(s: string): string {
  return /^[A-Za-z0-9_./:=@%+,-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}

/**
 * The "connect with" lines for one listen address. Without TLS: connect-hints.ts's plaintext lines.
 * With TLS: nbds:// / nbds+unix:// URIs carrying what the client needs (PSK: identity@ and
 * tls-psk-file=, the server's file, usable as is on this host; X.509: tls-certificates=, a directory with
 * ca-cert.pem, here the server's own, plus client-cert.pem/client-key.pem under --tls-verify-peer), a
 * qemu-img line with its tls-creds object, and under --tls on the plaintext lines as well.
 */
export function serveConnectHints(address: ListenAddress, exportName: string, tls: ServerTls | undefined): string[] {
  if (tls === undefined) return connectHints(address, exportName);
  const s = tls.settings;
  const identities = tls.pskIdentities();
  const identity = identities.length === 1 ? identities[0]! : identities.length > 1 ? identities[0]! : undefined;
  const uriTls: NbdUriTls =
    tls.kind === 'psk'
      ? { verifyPeer: true, pskFile: s.pskFile!, ...(identity !== undefined ? { username: identity } : {}) }
      : { verifyPeer: true, certificatesDir: s.certificatesDir! };
  const u: NbdUri =
    address.kind === 'unix'
      ? { kind: 'unix', socketPath: address.path, exportName, tls: uriTls }
      : { kind: 'tcp', host: address.host, port: address.port, exportName, tls: uriTls };
  const uri = shellQuote(formatNbdUri(u));
  const lines = [`nbdinfo ${uri}`];
  const nbdOpts = address.kind === 'unix' ? `path=${address.path}` : `host=${address.host},port=${address.port}`;
  if (tls.kind === 'psk') {
    // qemu reads DIR/keys.psk: the hint works as is only when the file has that name.
    const dir = basename(s.pskFile!) === 'keys.psk' ? dirname(s.pskFile!) : 'DIR-WITH-keys.psk';
    lines.push(
      `qemu-img info --object ${shellQuote(`tls-creds-psk,id=tls0,endpoint=client,dir=${dir}${identity !== undefined ? `,username=${identity}` : ''}`)} --image-opts ${shellQuote(`driver=nbd,${nbdOpts},export=${exportName},tls-creds=tls0`)}`,
    );
    if (identities.length > 1) lines.push(`(PSK identities in ${s.pskFile}: ${identities.slice(0, 8).join(', ')}${identities.length > 8 ? ', ...' : ''}; put yours before the @)`);
  } else {
    lines.push(
      `qemu-img info --object ${shellQuote(`tls-creds-x509,id=tls0,endpoint=client,dir=${s.certificatesDir!}`)} --image-opts ${shellQuote(`driver=nbd,${nbdOpts},export=${exportName},tls-creds=tls0`)}`,
    );
    lines.push(
      s.verifyPeer
        ? `(--tls-verify-peer: the client's directory needs ca-cert.pem plus client-cert.pem and client-key.pem signed by ${join(s.certificatesDir!, 'ca-cert.pem')})`
        : `(a client needs ${join(s.certificatesDir!, 'ca-cert.pem')} in its tls-certificates directory; over TCP the server certificate must name the host)`,
    );
  }
  if (tls.mode === 'on') lines.push('plaintext is allowed too (--tls on):', ...connectHints(address, exportName));
  return lines;
}
