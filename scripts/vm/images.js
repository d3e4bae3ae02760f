// Guest image definitions: which Debian packages, binaries and kernel modules each test image carries.
// Owns only data; scripts/vm/build-image.js turns a definition into a cached vmlinux + initramfs.
//
// Adding an image: list its packages (fetched with `apt-get download`,
// unpacked, never installed), the binaries to copy (their shared libraries are found with ldd), the
// modules to insmod at boot in order (their dependencies from modules.dep are added before each one),
// and any extra directories init must create.

/** The kernel meta package; the real linux-image-<kver> package it depends on is resolved at build time. */
export const KERNEL_META_PACKAGE = 'linux-image-amd64';

/** Packages every image carries. */
const BASE_PACKAGES = ['busybox-static'];

/**
 * @typedef {object} ImageSpec
 * @property {string} name            image name (cache directory prefix)
 * @property {string[]} packages      Debian packages unpacked into the staging tree
 * @property {string[]} binaries      paths (as installed) copied into the image with their libraries
 * @property {string[]} modules       modules insmod'ed by /init, in this order (deps resolved first)
 * @property {string[]} [extraDirs]   directories created in the image
 * @property {string[]} [etcFiles]    files from the unpacked packages' /etc copied verbatim
 * @property {number} memMiB          guest memory that is enough for this image's tests
 */

/** @type {Record<string, ImageSpec>} */
export const IMAGES = {
  ext4: {
    name: 'ext4',
    packages: [...BASE_PACKAGES, 'nbd-client', 'libnl-3-200', 'libnl-genl-3-200', 'e2fsprogs'],
    binaries: ['/sbin/nbd-client', '/sbin/mke2fs', '/sbin/mkfs.ext4', '/sbin/e2fsck', '/sbin/fsck.ext4', '/sbin/dumpe2fs', '/sbin/tune2fs'],
    // crc32c_generic first: ext4's metadata checksums ask the crypto API for crc32c.
    modules: ['crc32c_generic', 'virtio_pci', 'virtio_net', 'nbd', 'ext4'],
    etcFiles: ['/etc/mke2fs.conf'],
    memMiB: 160,
  },
  // GFS2 tests (issue 8; test/kernel/gfs2.test.ts): two guests, corosync + dlm_controld + gfs2.
  // See /work/shared/notes/kernel-tests-in-qemu.md for the cluster bring-up facts.
  gfs2: {
    name: 'gfs2',
    packages: [
      ...BASE_PACKAGES, 'nbd-client', 'libnl-3-200', 'libnl-genl-3-200',
      'corosync', 'libcfg7', 'libcmap4', 'libcorosync-common4', 'libcpg4', 'libquorum5', 'libvotequorum8',
      'libknet1', 'libnozzle1', 'libqb100', 'libstatgrab10', 'dlm-controld', 'libdlm3', 'libdlmcontrol3',
      'gfs2-utils',
    ],
    binaries: [
      '/sbin/nbd-client', '/usr/sbin/corosync', '/usr/sbin/corosync-cfgtool', '/usr/sbin/corosync-quorumtool',
      '/usr/sbin/dlm_controld', '/usr/sbin/dlm_tool', '/sbin/mkfs.gfs2', '/sbin/fsck.gfs2',
    ],
    // crc32c_generic must precede libcrc32c or libcrc32c fails to load.
    modules: ['crc32c_generic', 'virtio_pci', 'virtio_net', 'nbd', 'configfs', 'dlm', 'libcrc32c', 'gfs2'],
    extraDirs: ['/etc/corosync', '/etc/dlm', '/var/lib/corosync', '/var/log/cluster', '/run/dlm', '/dev/misc'],
    memMiB: 256,
  },
};

/** @param {string} name @returns {ImageSpec} */
export function imageSpec(name) {
  const spec = IMAGES[name];
  if (!spec) throw new Error(`unknown guest image "${name}" (known: ${Object.keys(IMAGES).join(', ')})`);
  return spec;
}
