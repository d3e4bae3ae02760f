// Pure pool operations: placement rules (legs on distinct devices, the disk log elsewhere), refusals that
// name the reason, grow-in-place, conversions, and the generated tables (plain and clustered).
import { describe, expect, it } from 'vitest';
import { parseTable } from '../../src/mirror/table.js';
import { PoolError } from '../../src/pool/errors.js';
import { checkMetadata, type PoolMetadata } from '../../src/pool/metadata.js';
import { convertMirrors, createPool, createVolume, extendPool, reducePool, resizeVolume, setClustered } from '../../src/pool/ops.js';
import { volumeTable } from '../../src/pool/tables.js';

const MiB = 1024 * 1024;
const dev = (n: string, mib = 65) => ({ path: `/dev/${n}`, sizeBytes: mib * MiB });

function pathsOf(md: PoolMetadata): Map<string, string> {
  return new Map(md.devices.map((d) => [d.uuid, d.path]));
}

function refused(f: () => unknown, code: string, re: RegExp): void {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(PoolError);
    expect((e as PoolError).code).toBe(code);
    expect((e as Error).message).toMatch(re);
    return;
  }
  throw new Error('expected a refusal');
}

describe('pool ops', () => {
  it('create: 64 MiB after the metadata area = 16 extents of 4 MiB; bad names and tiny devices refused', () => {
    const md = createPool({ name: 'p', devices: [dev('a'), dev('b')] });
    expect(md.devices.map((d) => d.extentCount)).toEqual([16, 16]);
    refused(() => createPool({ name: '-x', devices: [dev('a')] }), 'EINVAL', /pool name/);
    refused(() => createPool({ name: 'p', devices: [dev('a', 4)] }), 'ENOSPC', /too small: 4194304 bytes/);
    refused(() => createPool({ name: 'p', extentSizeBytes: 3 * MiB, devices: [dev('a')] }), 'EINVAL', /power of two/);
  });

  it('a mirror: legs on distinct devices, disk log on a third; too few devices refused with the reason', () => {
    const md = createPool({ name: 'p', devices: [dev('a'), dev('b'), dev('c')] });
    const { md: md2, volume } = createVolume(md, { name: 'v', sizeBytes: 10 * MiB, mirrors: 1 });
    expect(volume.sizeBytes).toBe(12 * MiB); // rounded up to whole extents
    const devices = new Set(volume.legs.map((l) => l.device));
    expect(devices.size).toBe(2);
    expect(devices.has(volume.logRun!.device)).toBe(false);
    expect(md2.seqno).toBe(md.seqno + 1);
    refused(() => createVolume(md2, { name: 'w', sizeBytes: MiB, mirrors: 3 }), 'ENOSPC', /each on its own device; found room for 3/);
    refused(() => createVolume(md2, { name: 'v', sizeBytes: MiB, mirrors: 0 }), 'EEXIST', /already exists/);
    refused(() => createVolume(md2, { name: 'w', sizeBytes: 100 * MiB, mirrors: 0 }), 'ENOSPC', /largest free run/);
    const two = createPool({ name: 'q', devices: [dev('a'), dev('b')] });
    refused(() => createVolume(two, { name: 'v', sizeBytes: MiB, mirrors: 1 }), 'ENOSPC', /disk log on a device other than the legs.*--log core/);
    expect(createVolume(two, { name: 'v', sizeBytes: MiB, mirrors: 1, log: 'core' }).volume.logRun).toBeUndefined();
  });

  it('tables: linear, mirror with the disk log on a slice, clustered pools get the userspace cluster log', () => {
    let md = createPool({ name: 'p', devices: [dev('a'), dev('b'), dev('c')] });
    md = createVolume(md, { name: 'lin', sizeBytes: 4 * MiB, mirrors: 0 }).md;
    md = createVolume(md, { name: 'm', sizeBytes: 8 * MiB, mirrors: 1, nosync: true }).md;
    const paths = pathsOf(md);
    const lin = volumeTable(md, paths, md.volumes[0]!);
    expect(lin).toMatch(/^0 8192 linear \/dev\/[abc] 2048$/);
    const m = volumeTable(md, paths, md.volumes[1]!);
    expect(m).toMatch(/^0 16384 mirror disk 3 \/dev\/[abc]@\d+s 1024 nosync 2 \/dev\/[abc] \d+ \/dev\/[abc] \d+$/);
    const spec = parseTable(m);
    expect(spec.kind === 'mirror' && spec.log.device).toMatch(/@\d+s$/);
    const c = setClustered(md, true);
    const ct = volumeTable(c, paths, c.volumes[1]!);
    expect(ct).toContain(`mirror userspace 6 ${c.volumes[1]!.uuid} integrated_flush clustered-disk /dev/`);
    const cs = parseTable(ct);
    expect(cs.kind === 'mirror' && cs.log.clustered && cs.log.kind).toBe('disk');
    // The log region and legs are the same extents either way: only the log form changes.
    expect(cs.kind === 'mirror' && cs.legs).toEqual(spec.kind === 'mirror' && spec.legs);
  });

  it('resize grows every leg in place, refuses shrinking and a leg boxed in by another volume', () => {
    let md = createPool({ name: 'p', devices: [dev('a'), dev('b'), dev('c')] });
    md = createVolume(md, { name: 'v', sizeBytes: 8 * MiB, mirrors: 1 }).md;
    const r = resizeVolume(md, 'v', 16 * MiB);
    expect(r.volume.legs.map((l) => l.extentCount)).toEqual([4, 4]);
    expect(r.volume.legs.map((l) => l.startExtent)).toEqual(md.volumes[0]!.legs.map((l) => l.startExtent));
    refused(() => resizeVolume(md, 'v', 4 * MiB), 'EINVAL', /only growing/);
    const boxed = createVolume(md, { name: 'w', sizeBytes: 50 * MiB, mirrors: 1, log: 'core' }).md; // fills after v on two devices
    refused(() => resizeVolume(boxed, 'v', 16 * MiB), 'ENOSPC', /cannot grow in place/);
  });

  it('convert: linear -> 2 legs (+disk log) -> 3 legs -> linear; reduce refused while a device holds extents', () => {
    let md = createPool({ name: 'p', devices: [dev('a'), dev('b'), dev('c'), dev('d')] });
    md = createVolume(md, { name: 'v', sizeBytes: 8 * MiB, mirrors: 0 }).md;
    const primary = md.volumes[0]!.legs[0]!;
    md = convertMirrors(md, 'v', 1).md;
    expect(md.volumes[0]!.legs).toHaveLength(2);
    expect(md.volumes[0]!.legs[0]).toEqual(primary);
    expect(md.volumes[0]!.logRun).toBeDefined();
    md = convertMirrors(md, 'v', 2).md;
    expect(new Set([...md.volumes[0]!.legs.map((l) => l.device), md.volumes[0]!.logRun!.device]).size).toBe(4);
    refused(() => convertMirrors(md, 'v', 3), 'ENOSPC', /found room for 0/);
    const busy = md.volumes[0]!.legs[1]!.device;
    refused(() => reducePool(md, busy), 'EBUSY', /holds 2 used extents \(volumes: v\)/);
    md = convertMirrors(md, 'v', 0).md;
    expect(md.volumes[0]!.legs).toEqual([primary]);
    expect(md.volumes[0]!.logRun).toBeUndefined();
    md = reducePool(md, busy);
    expect(md.devices).toHaveLength(3);
    checkMetadata(md);
    expect(extendPool(md, [dev('e')]).md.devices).toHaveLength(4);
  });
});
