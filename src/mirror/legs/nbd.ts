// NbdLeg: a Leg over a remote NBD export (a URI in the table: nbd://host[:port]/export or
// nbd+unix:///export?socket=PATH), through the protocol helper's NbdClient. Owns: the table offset on
// the remote export, the connection's lifetime, and turning whatever the client rejects with into an
// ExportError naming the URI. The client rejects every pending request with ExportError('EIO') when the
// connection drops; the mirror treats that as a leg failure. The leg never reconnects on its own.

import { strict as assert } from 'node:assert';
import { NbdClient } from '../../nbd/client/client.js';
import { ExportError } from '../../nbd/export.js';
import type { Leg, LegWriteFlags } from './leg.js';
import { LegOpenError, toExportError } from './errors.js';

/** The part of NbdClient a leg uses (see the team brief's client API). */
export interface NbdClientLike {
  readonly sizeBytes: number;
  read(target: Buffer, offsetBytes: number): Promise<void>;
  write(data: Buffer, offsetBytes: number, flags: { fua: boolean }): Promise<void>;
  flush(): Promise<void>;
  trim(offsetBytes: number, lengthBytes: number, flags: { fua: boolean }): Promise<void>;
  zero(offsetBytes: number, lengthBytes: number, flags: { fua: boolean; mayTrim: boolean; fastZero?: boolean }): Promise<void>;
  close(): Promise<void>;
}

export type NbdConnect = (uri: string) => Promise<NbdClientLike>;

/** True when a table device names a remote NBD export rather than a path. */
export function isNbdUri(device: string): boolean {
  return /^nbds?(\+(unix|tcp|vsock))?:\/\//i.test(device);
}

/** The protocol helper's client (src/nbd/client/client.ts). */
export const defaultNbdConnect: NbdConnect = (uri) => NbdClient.connect(uri);

export interface NbdLegOptions {
  /** Where the leg's data starts on the remote export (the table offset in bytes). */
  readonly offsetBytes: number;
  readonly connect?: NbdConnect;
}

export class NbdLeg implements Leg {
  readonly sizeBytes: number;
  private closed = false;

  private constructor(
    readonly device: string,
    /** The remote export's size in bytes. */
    readonly deviceBytes: number,
    readonly offsetBytes: number,
    private readonly client: NbdClientLike,
  ) {
    this.sizeBytes = Math.max(0, deviceBytes - offsetBytes);
  }

  /** Connect to `uri`. Rejects with LegOpenError naming the URI when the connection or handshake fails. */
  static async open(uri: string, opts: NbdLegOptions): Promise<NbdLeg> {
    assert(Number.isSafeInteger(opts.offsetBytes) && opts.offsetBytes >= 0, 'offsetBytes');
    const connect = opts.connect ?? defaultNbdConnect;
    let client: NbdClientLike;
    try {
      client = await connect(uri);
    } catch (err) {
      const code = (err as { code?: string } | null)?.code;
      throw new LegOpenError(uri, `cannot connect to leg '${uri}': ${err instanceof Error ? err.message : String(err)}`, code);
    }
    return new NbdLeg(uri, client.sizeBytes, opts.offsetBytes, client);
  }

  private check(offsetBytes: number, lengthBytes: number): void {
    if (this.closed) throw new ExportError('EIO', `${this.device}: leg is closed`);
    assert(offsetBytes >= 0 && lengthBytes >= 0 && offsetBytes + lengthBytes <= this.sizeBytes, 'range beyond leg');
  }

  async read(target: Buffer, offsetBytes: number): Promise<void> {
    this.check(offsetBytes, target.length);
    try {
      await this.client.read(target, this.offsetBytes + offsetBytes);
    } catch (err) {
      throw toExportError(err, this.device, `read of ${target.length} bytes at ${offsetBytes}`);
    }
  }

  async write(data: Buffer, offsetBytes: number, flags: LegWriteFlags): Promise<void> {
    this.check(offsetBytes, data.length);
    try {
      await this.client.write(data, this.offsetBytes + offsetBytes, flags);
    } catch (err) {
      throw toExportError(err, this.device, `write of ${data.length} bytes at ${offsetBytes}`);
    }
  }

  async flush(): Promise<void> {
    if (this.closed) throw new ExportError('EIO', `${this.device}: leg is closed`);
    try {
      await this.client.flush();
    } catch (err) {
      throw toExportError(err, this.device, 'flush');
    }
  }

  async trim(offsetBytes: number, lengthBytes: number): Promise<void> {
    this.check(offsetBytes, lengthBytes);
    try {
      await this.client.trim(this.offsetBytes + offsetBytes, lengthBytes, { fua: false });
    } catch (err) {
      throw toExportError(err, this.device, `trim of ${lengthBytes} bytes at ${offsetBytes}`);
    }
  }

  async zero(offsetBytes: number, lengthBytes: number, opts: { mayTrim: boolean }): Promise<void> {
    this.check(offsetBytes, lengthBytes);
    try {
      await this.client.zero(this.offsetBytes + offsetBytes, lengthBytes, { fua: false, mayTrim: opts.mayTrim });
    } catch (err) {
      throw toExportError(err, this.device, `zero of ${lengthBytes} bytes at ${offsetBytes}`);
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    try {
      await this.client.close();
    } catch (err) {
      throw toExportError(err, this.device, 'close');
    }
  }
}
