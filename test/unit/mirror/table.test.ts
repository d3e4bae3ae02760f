// Table parser and formatter: every form, round trips, every error message names its token, and a
// property test over random valid tables and random token mutations.
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import {
  formatMirrorArgs,
  formatTable,
  parseTable,
  regionCount,
  TableError,
  type LegSpec,
  type LogSpec,
  type MirrorTableSpec,
  type TableSpec,
} from '../../../src/mirror/table.js';

function roundTrip(line: string): TableSpec {
  const spec = parseTable(line);
  const text = formatTable(spec);
  expect(parseTable(text)).toEqual(spec);
  return spec;
}

describe('parseTable: forms', () => {
  it('linear', () => {
    const spec = roundTrip('0 2048 linear /dev/sdb 8');
    expect(spec).toEqual({
      kind: 'linear',
      startSectors: 0,
      lengthSectors: 2048,
      leg: { device: '/dev/sdb', offsetSectors: 8 },
    });
    expect(formatTable(spec)).toBe('0 2048 linear /dev/sdb 8');
  });

  it('linear tolerates extra whitespace and formats canonically', () => {
    const spec = parseTable('  0\t2048   linear /dev/sdb  8 \n');
    expect(formatTable(spec)).toBe('0 2048 linear /dev/sdb 8');
  });

  it('core log, no sync argument, no features', () => {
    const line = '0 8192 mirror core 1 1024 2 /dev/a 0 /dev/b 0';
    const spec = roundTrip(line) as MirrorTableSpec;
    expect(spec.log).toEqual({
      kind: 'core',
      regionSizeSectors: 1024,
      sync: 'default',
      clustered: false,
      integratedFlush: false,
      syntax: 'dm',
    });
    expect(spec.legs).toEqual([
      { device: '/dev/a', offsetSectors: 0 },
      { device: '/dev/b', offsetSectors: 0 },
    ]);
    expect(spec.features).toEqual({ handleErrors: false, keepLog: false });
    expect(formatTable(spec)).toBe(line);
    expect(regionCount(spec)).toBe(8);
  });

  it('core log nosync and sync', () => {
    const a = roundTrip('0 1000 mirror core 2 512 nosync 2 /dev/a 0 /dev/b 0') as MirrorTableSpec;
    expect(a.log.sync).toBe('nosync');
    expect(regionCount(a)).toBe(2); // last region partial
    const b = roundTrip('0 1000 mirror core 2 512 sync 2 /dev/a 0 /dev/b 0') as MirrorTableSpec;
    expect(b.log.sync).toBe('sync');
  });

  it('disk log with handle_errors and keep_log', () => {
    const line = '0 4096 mirror disk 3 /dev/log 64 nosync 3 /dev/a 16 /dev/b 0 nbd://127.0.0.1:10809/x 8 2 handle_errors keep_log';
    const spec = roundTrip(line) as MirrorTableSpec;
    expect(spec.log.kind).toBe('disk');
    expect(spec.log.device).toBe('/dev/log');
    expect(spec.log.regionSizeSectors).toBe(64);
    expect(spec.legs).toHaveLength(3);
    expect(spec.legs[2]).toEqual({ device: 'nbd://127.0.0.1:10809/x', offsetSectors: 8 });
    expect(spec.features).toEqual({ handleErrors: true, keepLog: true });
    expect(formatTable(spec)).toBe(line);
  });

  it('features: handle_errors alone, zero features accepted', () => {
    const a = roundTrip('0 4096 mirror core 1 64 2 /dev/a 0 /dev/b 0 1 handle_errors') as MirrorTableSpec;
    expect(a.features).toEqual({ handleErrors: true, keepLog: false });
    const b = parseTable('0 4096 mirror core 1 64 2 /dev/a 0 /dev/b 0 0') as MirrorTableSpec;
    expect(b.features).toEqual({ handleErrors: false, keepLog: false });
    expect(formatTable(b)).toBe('0 4096 mirror core 1 64 2 /dev/a 0 /dev/b 0');
  });

  it('userspace clustered-disk with integrated_flush', () => {
    const line =
      '0 8192 mirror userspace 6 LVM-abc integrated_flush clustered-disk /dev/log 1024 nosync 2 /dev/a 0 /dev/b 0 1 handle_errors';
    const spec = roundTrip(line) as MirrorTableSpec;
    expect(spec.log).toEqual({
      kind: 'disk',
      device: '/dev/log',
      regionSizeSectors: 1024,
      sync: 'nosync',
      clustered: true,
      uuid: 'LVM-abc',
      integratedFlush: true,
      syntax: 'userspace',
    });
    expect(formatTable(spec)).toBe(line);
  });

  it('userspace clustered-core, and block_on_error as a log argument', () => {
    const spec = roundTrip('0 8192 mirror userspace 4 u1 clustered-core 1024 block_on_error 2 /dev/a 0 /dev/b 0') as MirrorTableSpec;
    expect(spec.log.kind).toBe('core');
    expect(spec.log.clustered).toBe(true);
    expect(spec.log.uuid).toBe('u1');
    expect(spec.log.integratedFlush).toBe(false);
    expect(spec.features.handleErrors).toBe(true);
    expect(formatTable(spec)).toBe('0 8192 mirror userspace 3 u1 clustered-core 1024 2 /dev/a 0 /dev/b 0 1 handle_errors');
  });

  it('old cluster form from the spec (the seed)', () => {
    const line = '0 4724028 mirror cluster 5 disk my_uuid /dev/sda 1024 block_on_error 2 /dev/sdb 0 /dev/sdc 0';
    const spec = roundTrip(line) as MirrorTableSpec;
    expect(spec.lengthSectors).toBe(4724028);
    expect(spec.log).toEqual({
      kind: 'disk',
      device: '/dev/sda',
      regionSizeSectors: 1024,
      sync: 'default',
      clustered: true,
      uuid: 'my_uuid',
      integratedFlush: false,
      syntax: 'cluster',
    });
    expect(spec.features).toEqual({ handleErrors: true, keepLog: false });
    expect(spec.legs.map((l) => l.device)).toEqual(['/dev/sdb', '/dev/sdc']);
    expect(formatTable(spec)).toBe(line);
    expect(regionCount(spec)).toBe(Math.ceil(4724028 / 1024));
  });

  it('old cluster core form with nosync', () => {
    const line = '0 4096 mirror cluster 5 core u2 512 nosync block_on_error 2 /dev/b 0 /dev/c 0';
    const spec = roundTrip(line) as MirrorTableSpec;
    expect(spec.log.kind).toBe('core');
    expect(spec.log.device).toBeUndefined();
    expect(spec.log.sync).toBe('nosync');
    expect(spec.log.uuid).toBe('u2');
    expect(formatTable(spec)).toBe(line);
  });

  it('old clustered_disk form from the spec', () => {
    const line = '0 8192 mirror clustered_disk 4 /dev/log 1024 my-uuid block_on_error 3 /dev/a 0 /dev/b 0 /dev/c 0';
    const spec = roundTrip(line) as MirrorTableSpec;
    expect(spec.log).toEqual({
      kind: 'disk',
      device: '/dev/log',
      regionSizeSectors: 1024,
      sync: 'default',
      clustered: true,
      uuid: 'my-uuid',
      integratedFlush: false,
      syntax: 'clustered_disk',
    });
    expect(spec.features.handleErrors).toBe(true);
    expect(spec.legs).toHaveLength(3);
    expect(formatTable(spec)).toBe(line);
  });

  it('old clustered_disk with sync, and clustered_core', () => {
    const a = roundTrip('0 8192 mirror clustered_disk 5 /dev/log 1024 sync my-uuid block_on_error 2 /dev/a 0 /dev/b 0') as MirrorTableSpec;
    expect(a.log.sync).toBe('sync');
    const line = '0 8192 mirror clustered_core 3 1024 u3 block_on_error 2 /dev/a 0 /dev/b 0';
    const b = roundTrip(line) as MirrorTableSpec;
    expect(b.log).toMatchObject({ kind: 'core', uuid: 'u3', clustered: true, syntax: 'clustered_core' });
    expect(formatTable(b)).toBe(line);
    const c = roundTrip('0 8192 mirror clustered_core 2 1024 u3 2 /dev/a 0 /dev/b 0') as MirrorTableSpec;
    expect(c.features.handleErrors).toBe(false);
  });

  it('old form with keep_log as a feature combines with block_on_error', () => {
    const line = '0 8192 mirror clustered_disk 4 /dev/log 1024 u block_on_error 2 /dev/a 0 /dev/b 0 1 keep_log';
    const spec = roundTrip(line) as MirrorTableSpec;
    expect(spec.features).toEqual({ handleErrors: true, keepLog: true });
    expect(formatTable(spec)).toBe(line);
  });

  it('formatMirrorArgs prints the dmsetup table fields after the target type', () => {
    const spec = parseTable('0 4096 mirror disk 2 /dev/log 64 2 /dev/a 0 /dev/b 0 2 handle_errors keep_log') as MirrorTableSpec;
    expect(formatMirrorArgs(spec)).toBe('disk 2 /dev/log 64 2 /dev/a 0 /dev/b 0 2 handle_errors keep_log');
  });

  it('9 legs accepted, region size == length accepted', () => {
    const legs = Array.from({ length: 9 }, (_, i) => `/dev/l${i} 0`).join(' ');
    const spec = roundTrip(`0 1024 mirror core 1 1024 9 ${legs}`) as MirrorTableSpec;
    expect(spec.legs).toHaveLength(9);
    const uuid = 'u'.repeat(128);
    roundTrip(`0 1024 mirror userspace 3 ${uuid} clustered-core 2 2 /dev/a 0 /dev/b 0`);
  });
});

/** Assert that parsing throws a TableError naming `token` (at index `tokenIndex` when given). */
function expectTableError(line: string, token: string, pattern?: RegExp, tokenIndex?: number): TableError {
  let caught: unknown;
  try {
    parseTable(line);
  } catch (e) {
    caught = e;
  }
  expect(caught, `expected '${line}' to be rejected`).toBeInstanceOf(TableError);
  const err = caught as TableError;
  expect(err.token).toBe(token);
  expect(err.message).toContain(`'${token}'`);
  if (tokenIndex !== undefined) {
    expect(err.tokenIndex).toBe(tokenIndex);
    expect(err.message).toContain(`token ${tokenIndex} `);
  }
  if (pattern) expect(err.message).toMatch(pattern);
  return err;
}

describe('parseTable: errors name the token', () => {
  const legs2 = '2 /dev/a 0 /dev/b 0';

  it('empty line', () => {
    expectTableError('', '<end of line>', /empty/, 1);
    expectTableError('   ', '<end of line>', /empty/, 1);
  });

  it('start must be 0, and says why', () => {
    const e = expectTableError('8 2048 linear /dev/a 0', '8', /start must be 0.*one target per volume/, 1);
    expect(e.column).toBe(1);
  });

  it('numbers must be non-negative decimal integers', () => {
    expectTableError('0 -5 linear /dev/a 0', '-5', /length must be a non-negative decimal integer/, 2);
    expectTableError('0 1.5 linear /dev/a 0', '1.5', /non-negative decimal integer/, 2);
    expectTableError('0 0x10 linear /dev/a 0', '0x10', /non-negative decimal integer/, 2);
    expectTableError('0 2048 linear /dev/a abc', 'abc', /offset of device '\/dev\/a'/, 5);
    expectTableError('0 99999999999999999999 linear /dev/a 0', '99999999999999999999', /too large/, 2);
    expectTableError(`0 4096 mirror core 1 6x ${legs2}`, '6x', /region_size must be a non-negative/, 6);
  });

  it('length 0', () => {
    expectTableError('0 0 linear /dev/a 0', '0', /at least 1 sector/, 2);
  });

  it('unknown target type and missing tokens', () => {
    expectTableError('0 2048 striped 2 /dev/a 0', 'striped', /unknown target type/, 3);
    expectTableError('0 2048', '<end of line>', /missing target type/, 3);
    const e = expectTableError('0 2048 linear /dev/a', '<end of line>', /missing <offset> for device '\/dev\/a'/, 5);
    expect(e.column).toBe('0 2048 linear /dev/a'.length + 1);
  });

  it('trailing tokens', () => {
    expectTableError('0 2048 linear /dev/a 0 extra', 'extra', /trailing/, 6);
    // A trailing token after features is a feature-count mismatch naming the first extra token.
    expectTableError(`0 4096 mirror core 1 64 ${legs2} 1 handle_errors junk`, 'junk', /feature count says 1 but 2 tokens follow/, 14);
  });

  it('unknown log type', () => {
    expectTableError(`0 4096 mirror bitmap 1 64 ${legs2}`, 'bitmap', /unknown log type/, 4);
  });

  it('log argument count mismatches', () => {
    expectTableError(`0 4096 mirror core 3 64 ${legs2}`, '3', /takes 1 or 2 arguments, not 3/, 5);
    expectTableError(`0 4096 mirror disk 1 64 ${legs2}`, '1', /takes 2 or 3 arguments, not 1/, 5);
    expectTableError('0 4096 mirror core 40 64 2 /dev/a 0', '40', /log argument count says 40 but only 4 tokens follow/, 5);
    expectTableError(`0 4096 mirror core x 64 ${legs2}`, 'x', /log argument count must be/, 5);
  });

  it('bad sync word', () => {
    expectTableError(`0 4096 mirror core 2 64 fast ${legs2}`, 'fast', /expected 'sync' or 'nosync'/, 7);
    expectTableError(`0 8192 mirror clustered_disk 5 /dev/l 1024 sink u block_on_error ${legs2}`, 'sink', /'sync' or 'nosync'/, 8);
  });

  it('region size rules', () => {
    expectTableError(`0 4096 mirror core 1 100 ${legs2}`, '100', /power of two of at least 2/, 6);
    expectTableError(`0 4096 mirror core 1 1 ${legs2}`, '1', /power of two of at least 2/, 6);
    expectTableError(`0 4096 mirror core 1 0 ${legs2}`, '0', /power of two/, 6);
    expectTableError(`0 1000 mirror core 1 1024 ${legs2}`, '1024', /larger than the target length 1000/, 6);
    expectTableError(`0 1000 mirror disk 2 /dev/l 2048 ${legs2}`, '2048', /larger than the target length/, 7);
  });

  it('leg count rules', () => {
    expectTableError('0 4096 mirror core 1 64 1 /dev/a 0', '1', /needs 2\.\.9 legs/, 7);
    const legs = Array.from({ length: 10 }, (_, i) => `/dev/l${i} 0`).join(' ');
    expectTableError(`0 4096 mirror core 1 64 10 ${legs}`, '10', /needs 2\.\.9 legs/, 7);
    expectTableError('0 4096 mirror core 1 64 3 /dev/a 0 /dev/b 0', '3', /says 3 legs \(6 tokens.*only 4 tokens follow/, 7);
    expectTableError('0 4096 mirror core 1 64', '<end of line>', /missing <#legs>/, 7);
  });

  it('duplicate devices (legs and the log device)', () => {
    expectTableError('0 4096 mirror core 1 64 2 /dev/a 0 /dev/a 8', '/dev/a', /listed twice \(first at token 8\)/, 10);
    expectTableError('0 4096 mirror disk 2 /dev/a 64 2 /dev/a 0 /dev/b 0', '/dev/a', /listed twice \(first at token 6\)/, 9);
  });

  it('features', () => {
    expectTableError(`0 4096 mirror core 1 64 ${legs2} 1 keep_log`, 'keep_log', /keep_log requires handle_errors/, 13);
    expectTableError(`0 4096 mirror core 1 64 ${legs2} 1 fast_mode`, 'fast_mode', /unknown feature/, 13);
    expectTableError(`0 4096 mirror core 1 64 ${legs2} 2 handle_errors`, '2', /feature count says 2 but only 1 tokens follow/, 12);
    expectTableError(`0 4096 mirror core 1 64 ${legs2} 2 handle_errors handle_errors`, 'handle_errors', /feature given twice/, 14);
    expectTableError(`0 4096 mirror core 1 64 ${legs2} x`, 'x', /feature count must be/, 12);
  });

  it('userspace log errors', () => {
    expectTableError(`0 4096 mirror userspace 2 u clustered-core ${legs2}`, '2', /at least 3 arguments, not 2/, 5);
    expectTableError(`0 4096 mirror userspace 3 u clustered-bogus 64 ${legs2}`, 'clustered-bogus', /clustered-core' or 'clustered-disk/, 7);
    expectTableError(`0 4096 mirror userspace 3 u integrated_flush clustered-core ${legs2}`, '3', /userspace clustered-core/, 5);
    expectTableError(`0 4096 mirror userspace 4 u clustered-core 64 64 ${legs2}`, '64', /unexpected argument to clustered-core/, 9);
    expectTableError(`0 4096 mirror userspace 3 ${'u'.repeat(129)} clustered-core 64 ${legs2}`, 'u'.repeat(129), /129 characters, at most 128/, 6);
    expectTableError(`0 4096 mirror userspace 5 u clustered-core 64 sync nosync ${legs2}`, 'sync', /given twice/, 9);
  });

  it('old cluster log errors', () => {
    expectTableError(`0 4096 mirror cluster 4 tape u 64 block_on_error ${legs2}`, 'tape', /'core' or 'disk'/, 6);
    expectTableError(`0 4096 mirror cluster 3 disk u 64 ${legs2}`, '3', /cluster disk/, 5);
    expectTableError(`0 4096 mirror cluster 4 core u 64 65 ${legs2}`, '65', /unexpected argument to cluster core log/, 9);
    expectTableError(`0 4096 mirror cluster 0 ${legs2}`, '0', /at least 3/, 5);
    expectTableError(`0 4096 mirror clustered_disk 2 /dev/l 64 ${legs2}`, '2', /clustered_disk' takes 3\.\.5/, 5);
    expectTableError(`0 4096 mirror clustered_core 1 64 ${legs2}`, '1', /clustered_core' takes 2\.\.4/, 5);
  });
});

// ---------------------------------------------------------------------------------------------------
// Properties

const deviceArb = fc.oneof(
  fc.stringMatching(/^\/dev\/[a-z][a-z0-9]{0,6}$/),
  fc.stringMatching(/^nbd:\/\/127\.0\.0\.1:[1-9][0-9]{0,4}\/[a-z]{1,5}$/),
);
const uuidArb = fc.stringMatching(/^[A-Za-z0-9_-]{1,40}$/);
const syncArb = fc.constantFrom('default', 'sync', 'nosync') as fc.Arbitrary<'default' | 'sync' | 'nosync'>;

const mirrorArb: fc.Arbitrary<MirrorTableSpec> = fc
  .record({
    regionShift: fc.integer({ min: 1, max: 20 }),
    extraSectors: fc.integer({ min: 0, max: 1_000_000 }),
    devices: fc.uniqueArray(deviceArb, { minLength: 3, maxLength: 10 }),
    legCount: fc.integer({ min: 2, max: 9 }),
    offsets: fc.array(fc.integer({ min: 0, max: 2 ** 40 }), { minLength: 9, maxLength: 9 }),
    kind: fc.constantFrom('core', 'disk') as fc.Arbitrary<'core' | 'disk'>,
    syntax: fc.constantFrom('dm', 'userspace', 'cluster', 'clustered') as fc.Arbitrary<string>,
    sync: syncArb,
    uuid: uuidArb,
    integratedFlush: fc.boolean(),
    handleErrors: fc.boolean(),
    keepLog: fc.boolean(),
  })
  .filter((r) => r.devices.length >= Math.min(r.legCount, r.devices.length - 1) + 1)
  .map((r) => {
    const region = 2 ** r.regionShift;
    const legCount = Math.min(r.legCount, r.devices.length - 1);
    const legs: LegSpec[] = r.devices
      .slice(1, 1 + legCount)
      .map((device, i) => ({ device, offsetSectors: r.offsets[i] as LegSpec['offsetSectors'] }));
    const clustered = r.syntax !== 'dm';
    const syntax = (r.syntax === 'clustered' ? `clustered_${r.kind}` : r.syntax) as LogSpec['syntax'];
    const log = {
      kind: r.kind,
      ...(r.kind === 'disk' ? { device: r.devices[0] as string } : {}),
      regionSizeSectors: region,
      sync: r.sync,
      clustered,
      ...(clustered ? { uuid: r.uuid } : {}),
      integratedFlush: syntax === 'userspace' ? r.integratedFlush : false,
      syntax,
    } as LogSpec;
    return {
      kind: 'mirror',
      startSectors: 0,
      lengthSectors: region + r.extraSectors,
      log,
      legs,
      features: { handleErrors: r.handleErrors, keepLog: r.handleErrors && r.keepLog },
    } as unknown as MirrorTableSpec;
  })
  .filter((s) => s.legs.length >= 2);

const linearArb: fc.Arbitrary<TableSpec> = fc
  .record({ len: fc.integer({ min: 1, max: 2 ** 40 }), device: deviceArb, off: fc.integer({ min: 0, max: 2 ** 40 }) })
  .map(
    (r) =>
      ({
        kind: 'linear',
        startSectors: 0,
        lengthSectors: r.len,
        leg: { device: r.device, offsetSectors: r.off },
      }) as unknown as TableSpec,
  );

const specArb = fc.oneof(mirrorArb, linearArb);

const mutationTokenArb = fc.oneof(
  fc.constantFrom(
    '0', '1', '2', '3', '9', '10', '-1', '1024', '3.5', '0x20', '99999999999999999999', 'sync', 'nosync',
    'block_on_error', 'handle_errors', 'keep_log', 'integrated_flush', 'core', 'disk', 'userspace', 'cluster',
    'clustered_disk', 'clustered_core', 'clustered-core', 'clustered-disk', 'mirror', 'linear', '/dev/a',
  ),
  fc.stringMatching(/^[^\s]{1,12}$/),
);

describe('properties', () => {
  it('random valid tables round-trip through format and parse', () => {
    fc.assert(
      fc.property(specArb, (spec) => {
        const text = formatTable(spec);
        const back = parseTable(text);
        expect(back).toEqual(spec);
        expect(formatTable(back)).toBe(text);
      }),
      { numRuns: 500 },
    );
  });

  it('random token mutations either parse or throw TableError, never anything else', () => {
    const mutationArb = fc.record({
      spec: specArb,
      op: fc.constantFrom('replace', 'delete', 'insert', 'swap'),
      at: fc.nat(),
      token: mutationTokenArb,
    });
    fc.assert(
      fc.property(mutationArb, ({ spec, op, at, token }) => {
        const tokens = formatTable(spec).split(' ');
        const i = at % tokens.length;
        if (op === 'replace') tokens[i] = token;
        else if (op === 'delete') tokens.splice(i, 1);
        else if (op === 'insert') tokens.splice(i, 0, token);
        else {
          const j = (i + 1) % tokens.length;
          [tokens[i], tokens[j]] = [tokens[j] as string, tokens[i] as string];
        }
        const line = tokens.join(' ');
        try {
          const parsed = parseTable(line);
          // Whatever parses must format to something that parses to the same spec.
          expect(parseTable(formatTable(parsed))).toEqual(parsed);
        } catch (e) {
          if (!(e instanceof TableError)) throw e;
          // The error names a token that occurs in the line (or the end of line).
          if (e.token !== '<end of line>') expect(line.split(' ')).toContain(e.token);
          expect(e.message).toContain(`'${e.token}'`);
        }
      }),
      { numRuns: 3000 },
    );
  });
});
