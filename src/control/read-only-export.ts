// --read-only: wraps an Export so it advertises read-only and refuses every change with EPERM. The
// server already refuses writes to a read-only export at the edge; the rejections here are the inner
// assertion that nothing slipped through. Reads, block status, cache and close pass straight through.
import { ExportError, type Export, type ExportCapabilities, type Extent, type SplicePipe } from '../nbd/export.js';

export class ReadOnlyExport implements Export {
  private readonly caps: ExportCapabilities;

  constructor(private readonly inner: Export) {
    const c = inner.capabilities();
    this.caps = { ...c, readOnly: true, canTrim: false, canZero: false, canFastZero: false, canFua: false };
  }

  capabilities(): ExportCapabilities {
    return this.caps;
  }
  read(target: Buffer, offsetBytes: number): Promise<void> {
    return this.inner.read(target, offsetBytes);
  }
  spliceRead(pipe: SplicePipe, offsetBytes: number, lengthBytes: number): boolean {
    const inner = this.inner;
    return inner.spliceRead !== undefined && inner.spliceRead(pipe, offsetBytes, lengthBytes);
  }
  async write(): Promise<void> {
    throw new ExportError('EPERM', 'export is read-only');
  }
  flush(): Promise<void> {
    return this.inner.flush();
  }
  async trim(): Promise<void> {
    throw new ExportError('EPERM', 'export is read-only');
  }
  async zero(): Promise<void> {
    throw new ExportError('EPERM', 'export is read-only');
  }
  cache(offsetBytes: number, lengthBytes: number): Promise<void> {
    return this.inner.cache(offsetBytes, lengthBytes);
  }
  blockStatus(offsetBytes: number, lengthBytes: number): Promise<Extent[]> {
    return this.inner.blockStatus(offsetBytes, lengthBytes);
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}
