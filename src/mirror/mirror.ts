// STUB (signature only, implementation follows): MirrorExport.
import type { Export, ExportCapabilities, Extent, WriteFlags, ZeroFlags } from '../nbd/export.js';
import type { MirrorOptions } from './options.js';
export type { MirrorOptions } from './options.js';

export async function createMirror(opts: MirrorOptions): Promise<MirrorExport> {
  const m = new MirrorExport(opts);
  await m.activate();
  return m;
}

export class MirrorExport implements Export {
  constructor(readonly opts: MirrorOptions) {}
  async activate(): Promise<void> {
    throw new Error('not implemented yet');
  }
  capabilities(): ExportCapabilities {
    throw new Error('not implemented yet');
  }
  async read(_t: Buffer, _o: number): Promise<void> {}
  async write(_d: Buffer, _o: number, _f: WriteFlags): Promise<void> {}
  async flush(): Promise<void> {}
  async trim(_o: number, _l: number, _f: WriteFlags): Promise<void> {}
  async zero(_o: number, _l: number, _f: ZeroFlags): Promise<void> {}
  async cache(_o: number, _l: number): Promise<void> {}
  async blockStatus(_o: number, l: number): Promise<Extent[]> {
    return [{ lengthBytes: l, flags: 0 }];
  }
  async close(): Promise<void> {}
}
