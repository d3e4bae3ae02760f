// A file-backed Export for protocol tests and the fio comparison: fs read/write on the FileHandle's
// fd (callback API, one thread-pool hop per call), fdatasync for flush/FUA. Not sparse-aware (blockStatus reports all data).

import { read as fsRead, readSync, write as fsWrite, writeSync } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';

/**
 * FILE_EXPORT_SYNC_BYTES_MAX=n: reads and writes up to n bytes use readSync/writeSync on the main
 * thread instead of a libuv thread-pool hop (an experiment for page-cached files: it blocks the
 * event loop for the syscall). Default 0: always asynchronous.
 */
const SYNC_BYTES_MAX = Number(process.env.FILE_EXPORT_SYNC_BYTES_MAX ?? 0);

function preadOnce(fd: number, target: Buffer, at: number, n: number, position: number): Promise<number> {
  return new Promise((resolve, reject) => {
    fsRead(fd, target, at, n, position, (err, bytesRead) => (err ? reject(err) : resolve(bytesRead)));
  });
}

function pwriteOnce(fd: number, data: Buffer, at: number, n: number, position: number): Promise<number> {
  return new Promise((resolve, reject) => {
    fsWrite(fd, data, at, n, position, (err, bytesWritten) => (err ? reject(err) : resolve(bytesWritten)));
  });
}
import type { Export, ExportCapabilities, Extent, WriteFlags, ZeroFlags } from '../../src/nbd/export.js';

export class FileExport implements Export {
  private constructor(
    private readonly fh: FileHandle,
    private readonly caps: ExportCapabilities,
  ) {}

  static async open(path: string): Promise<FileExport> {
    const fh = await open(path, 'r+');
    const { size } = await fh.stat();
    return new FileExport(fh, {
      sizeBytes: size,
      readOnly: false,
      canFlush: true,
      canFua: true,
      canTrim: false,
      canZero: true,
      canFastZero: false,
      canCache: false,
      canMultiConn: true,
      blockSizeMin: 1,
      blockSizePreferred: 4096,
      blockSizeMax: 32 * 1024 * 1024,
    });
  }

  capabilities(): ExportCapabilities {
    return this.caps;
  }

  async read(target: Buffer, offsetBytes: number): Promise<void> {
    let done = 0;
    const fd = this.fh.fd;
    if (target.length <= SYNC_BYTES_MAX) done = readSync(fd, target, 0, target.length, offsetBytes);
    while (done < target.length) {
      const bytesRead = await preadOnce(fd, target, done, target.length - done, offsetBytes + done);
      if (bytesRead === 0) {
        target.fill(0, done);
        return;
      }
      done += bytesRead;
    }
  }

  async write(data: Buffer, offsetBytes: number, flags: WriteFlags): Promise<void> {
    let done = 0;
    if (data.length <= SYNC_BYTES_MAX) done = writeSync(this.fh.fd, data, 0, data.length, offsetBytes);
    while (done < data.length) {
      const bytesWritten = await pwriteOnce(this.fh.fd, data, done, data.length - done, offsetBytes + done);
      done += bytesWritten;
    }
    if (flags.fua) await this.fh.datasync();
  }

  async flush(): Promise<void> {
    await this.fh.datasync();
  }

  async trim(): Promise<void> {}

  async zero(offsetBytes: number, lengthBytes: number, flags: ZeroFlags): Promise<void> {
    const chunk = Buffer.alloc(Math.min(lengthBytes, 1 << 20));
    for (let done = 0; done < lengthBytes; done += chunk.length) {
      const n = Math.min(chunk.length, lengthBytes - done);
      await this.write(chunk.subarray(0, n), offsetBytes + done, { fua: false });
    }
    if (flags.fua) await this.fh.datasync();
  }

  async cache(): Promise<void> {}

  async blockStatus(_offsetBytes: number, lengthBytes: number): Promise<Extent[]> {
    return [{ lengthBytes, flags: 0 }];
  }

  async close(): Promise<void> {
    await this.fh.close();
  }
}
