// Minimal cpio "newc" archive writer (the initramfs format the kernel unpacks). Owns only the encoding:
// entries in, one Buffer out. Directories must be added before their contents; mtimes are 0 so the same
// tree gives the same bytes.

const NEWC_MAGIC = '070701';
const ALIGN_BYTES = 4;

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_IFCHR = 0o020000;

/**
 * @typedef {{ kind: 'dir', path: string, mode?: number }
 *   | { kind: 'file', path: string, data: Buffer, mode?: number }
 *   | { kind: 'symlink', path: string, target: string }
 *   | { kind: 'chardev', path: string, major: number, minor: number, mode?: number }} CpioEntry
 */

export class CpioWriter {
  constructor() {
    /** @type {Buffer[]} */
    this.chunks = [];
    this.offsetBytes = 0;
    this.nextIno = 1;
  }

  /** @param {CpioEntry} entry */
  add(entry) {
    const name = entry.path.replace(/^\/+/, '');
    if (name === '') return;
    switch (entry.kind) {
      case 'dir': this.#entry(name, S_IFDIR | (entry.mode ?? 0o755), 2, Buffer.alloc(0)); break;
      case 'file': this.#entry(name, S_IFREG | (entry.mode ?? 0o644), 1, entry.data); break;
      case 'symlink': this.#entry(name, S_IFLNK | 0o777, 1, Buffer.from(entry.target)); break;
      case 'chardev':
        this.#entry(name, S_IFCHR | (entry.mode ?? 0o600), 1, Buffer.alloc(0), entry.major, entry.minor);
        break;
      default: throw new Error(`cpio: unknown entry kind ${/** @type {any} */ (entry).kind}`);
    }
  }

  /** Ends the archive and returns its bytes. */
  finish() {
    this.#entry('TRAILER!!!', 0, 1, Buffer.alloc(0), 0, 0, 0);
    return Buffer.concat(this.chunks);
  }

  #entry(name, mode, nlink, data, rdevMajor = 0, rdevMinor = 0, ino = this.nextIno++) {
    const nameBytes = Buffer.from(`${name}\0`);
    const fields = [ino, mode, 0, 0, nlink, 0, data.length, 0, 0, rdevMajor, rdevMinor, nameBytes.length, 0];
    const header = NEWC_MAGIC + fields.map((v) => v.toString(16).padStart(8, '0')).join('');
    this.#push(Buffer.from(header, 'ascii'));
    this.#push(nameBytes);
    this.#pad();
    this.#push(data);
    this.#pad();
  }

  #push(buf) {
    this.chunks.push(buf);
    this.offsetBytes += buf.length;
  }

  #pad() {
    const rem = this.offsetBytes % ALIGN_BYTES;
    if (rem !== 0) this.#push(Buffer.alloc(ALIGN_BYTES - rem));
  }
}

