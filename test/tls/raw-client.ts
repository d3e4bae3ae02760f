// A deliberately simple NBD handshake client for protocol-level TLS tests: send exactly the options a
// test names, read exactly the replies, upgrade to TLS when told. Built on the codec, read through the
// ByteReader; anything a real client would hide (replayed STARTTLS, plaintext after the upgrade) is possible.
import { connect, type Socket } from 'node:net';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import * as C from '../../src/nbd/codec/constants.js';
import { decodeGreeting, decodeInfo, decodeOptionReplyHeader, decodeRepServer, encodeClientFlags, encodeInfoRequest, encodeOption } from '../../src/nbd/codec/option.js';
import { ByteReader } from '../../src/nbd/server/byte-reader.js';

export interface RawReply {
  readonly option: number;
  readonly type: number;
  readonly data: Buffer;
}

export class RawClient {
  private reader: ByteReader;
  readonly closed: Promise<void>;
  /** The socket under TLS, for writing plaintext past the TLS layer. */
  readonly plain: Socket;
  private constructor(private socket: Socket) {
    this.plain = socket;
    this.reader = new ByteReader(socket, 1 << 20);
    this.closed = new Promise((resolve) => socket.once('close', () => resolve()));
    socket.on('error', () => undefined);
  }

  static async open(socketPath: string): Promise<RawClient> {
    const s = connect({ path: socketPath });
    await new Promise<void>((resolve, reject) => {
      s.once('connect', resolve);
      s.once('error', reject);
    });
    const c = new RawClient(s);
    const flags = decodeGreeting(await c.reader.read(C.GREETING_BYTES));
    if (flags === null) throw new Error('bad greeting');
    s.write(encodeClientFlags(C.NBD_FLAG_C_FIXED_NEWSTYLE | C.NBD_FLAG_C_NO_ZEROES));
    return c;
  }

  get raw(): Socket {
    return this.socket;
  }

  send(option: number, data?: Buffer): void {
    this.socket.write(encodeOption(option, data));
  }

  async reply(): Promise<RawReply> {
    const h = decodeOptionReplyHeader(await this.reader.read(C.OPTION_REPLY_HEADER_BYTES));
    if (h === null) throw new Error('bad option reply magic');
    const data = h.lengthBytes === 0 ? Buffer.alloc(0) : await this.reader.read(h.lengthBytes);
    return { option: h.option, type: h.type, data };
  }

  async option(option: number, data?: Buffer): Promise<RawReply> {
    this.send(option, data);
    return this.reply();
  }

  /** LIST: the names, or the error reply. */
  async list(): Promise<string[] | RawReply> {
    this.send(C.NBD_OPT_LIST);
    const names: string[] = [];
    for (;;) {
      const r = await this.reply();
      if (r.type === C.NBD_REP_SERVER) names.push(decodeRepServer(r.data)!.name);
      else if (r.type === C.NBD_REP_ACK) return names;
      else return r;
    }
  }

  /** GO or INFO: the export's transmission flags, or the error reply. */
  async go(name: string, option: number = C.NBD_OPT_GO): Promise<{ transmissionFlags: number } | RawReply> {
    this.send(option, encodeInfoRequest({ name, infos: [] }));
    let transmissionFlags = -1;
    for (;;) {
      const r = await this.reply();
      if (r.type === C.NBD_REP_INFO) {
        const info = decodeInfo(r.data);
        if (info?.type === C.NBD_INFO_EXPORT) transmissionFlags = info.transmissionFlags;
      } else if (r.type === C.NBD_REP_ACK) return { transmissionFlags };
      else return r;
    }
  }

  /** After an ACK to STARTTLS: the TLS handshake, then options go over TLS. */
  async upgrade(opts: { psk?: { identity: string; key: Buffer }; ca?: Buffer; cert?: Buffer; key?: Buffer }): Promise<TLSSocket> {
    const rest = this.reader.detach();
    if (rest.length > 0) throw new Error('server sent bytes after the STARTTLS reply');
    const s = tlsConnect({
      socket: this.socket,
      minVersion: 'TLSv1.3',
      servername: 'localhost',
      ...(opts.psk ? { pskCallback: () => ({ identity: opts.psk!.identity, psk: opts.psk!.key }), checkServerIdentity: () => undefined } : {}),
      ...(opts.ca ? { ca: opts.ca } : {}),
      ...(opts.cert ? { cert: opts.cert, key: opts.key } : {}),
    });
    await new Promise<void>((resolve, reject) => {
      s.once('secureConnect', () => resolve());
      s.once('error', reject);
    });
    s.on('error', () => undefined);
    this.socket = s;
    this.reader = new ByteReader(s, 1 << 20);
    return s;
  }

  destroy(): void {
    this.socket.destroy();
  }
}

export function pskOf(file: string, identity: string, text: string): { identity: string; key: Buffer } {
  const line = text.split('\n').find((l) => l.startsWith(`${identity}:`));
  if (line === undefined) throw new Error(`${identity} not in ${file}`);
  return { identity, key: Buffer.from(line.slice(identity.length + 1).trim(), 'hex') };
}
