// A leg: one copy of the volume's data (a file, a block device, a remote NBD export), already
// positioned at its table offset: offsets here are relative to the start of the mirror's data on it.
// Legs report failures by rejecting with ExportError (errno name); the mirror decides what a failure
// means (fail the leg, hold the write, retry a read elsewhere). Legs never retry on their own.

export interface LegWriteFlags {
  readonly fua: boolean;
}

export interface Leg {
  /** The device as the table names it (path or URI); used in status and table output. */
  readonly device: string;
  /** Usable bytes from the table offset to the end of the device. */
  readonly sizeBytes: number;
  read(target: Buffer, offsetBytes: number): Promise<void>;
  write(data: Buffer, offsetBytes: number, flags: LegWriteFlags): Promise<void>;
  flush(): Promise<void>;
  trim(offsetBytes: number, lengthBytes: number): Promise<void>;
  /** mayTrim=false: the zeroed range must stay allocated. */
  zero(offsetBytes: number, lengthBytes: number, opts: { mayTrim: boolean }): Promise<void>;
  close(): Promise<void>;
}
