// planRepair (pure): the table LVM's lvconvert --repair would produce, from the live table and leg health.
import { describe, expect, it } from 'vitest';
import { parseTable } from '../../src/mirror/table.js';
import { planRepair } from '../../src/control/repair.js';
import { ControlError } from '../../src/control/control-error.js';

const three = parseTable('0 2048 mirror core 2 1024 nosync 3 /a 0 /b 8 /c 0 1 handle_errors');
const legs = (h: string) => ['/a', '/b', '/c'].map((device, i) => ({ device, health: h[i]! }));

describe('planRepair', () => {
  it('nothing failed: null; a linear table: null', () => {
    expect(planRepair(three, legs('AAA'), { policy: 'remove', spares: [] })).toBeNull();
    expect(planRepair(parseTable('0 8 linear /a 0'), [{ device: '/a', health: 'A' }], { policy: 'remove', spares: [] })).toBeNull();
    // R (read) and S (resync) errors do not trigger a repair (dmeventd repairs on D, F, U).
    expect(planRepair(three, legs('ARS'), { policy: 'remove', spares: [] })).toBeNull();
  });

  it('remove: failed legs dropped, order and offsets kept, features kept', () => {
    const p = planRepair(three, legs('ADA'), { policy: 'remove', spares: ['/spare'] })!;
    expect(p.line).toBe('0 2048 mirror core 2 1024 nosync 2 /a 0 /c 0 1 handle_errors');
    expect(p.removed).toEqual(['/b']);
    expect(p.added).toEqual([]);
  });

  it('remove down to one leg: a linear table on the survivor (its offset kept)', () => {
    const p = planRepair(three, legs('FAU'), { policy: 'remove', spares: [] })!;
    expect(p.line).toBe('0 2048 linear /b 8');
    expect(p.removed).toEqual(['/a', '/c']);
  });

  it('allocate: failed legs replaced by unused spares; nosync dropped since a spare holds no data', () => {
    const p = planRepair(three, legs('DAA'), { policy: 'allocate', spares: ['/b', '/s1', '/s2'] })!;
    expect(p.line).toBe('0 2048 mirror core 1 1024 3 /b 8 /c 0 /s1 0 1 handle_errors');
    expect(p.added).toEqual(['/s1']);
  });

  it('allocate with too few spares: replaces what it can, drops the rest (LVM falls back to remove)', () => {
    const p = planRepair(three, legs('DDA'), { policy: 'allocate', spares: ['/s1'] })!;
    expect(p.line).toBe('0 2048 mirror core 1 1024 2 /c 0 /s1 0 1 handle_errors');
  });

  it('devices reported failed by events count even when the health says A', () => {
    const p = planRepair(three, legs('AAA'), { policy: 'remove', spares: [], failed: new Set(['/c']) })!;
    expect(p.line).toBe('0 2048 mirror core 2 1024 nosync 2 /a 0 /b 8 1 handle_errors');
  });

  it('every leg failed: refused, naming them', () => {
    expect(() => planRepair(three, legs('DDD'), { policy: 'remove', spares: [] })).toThrow(ControlError);
    expect(() => planRepair(three, legs('DDD'), { policy: 'remove', spares: [] })).toThrow('/a, /b, /c');
  });

  it('a disk log and the old cluster syntax are kept as written', () => {
    const disk = parseTable('0 2048 mirror disk 2 /log 1024 2 /a 0 /b 0');
    expect(planRepair(disk, [{ device: '/a', health: 'A' }, { device: '/b', health: 'D' }], { policy: 'allocate', spares: ['/log', '/n'] })!.line).toBe(
      '0 2048 mirror disk 2 /log 1024 2 /a 0 /n 0',
    );
    const old = parseTable('0 2048 mirror cluster 5 disk u1 /log 1024 block_on_error 3 /a 0 /b 0 /c 0');
    expect(planRepair(old, legs('AAD'), { policy: 'remove', spares: [] })!.line).toBe('0 2048 mirror cluster 5 disk u1 /log 1024 block_on_error 2 /a 0 /b 0');
  });
  it('a default leg lost while out of sync (the engine has no default): refused naming why, unless forced', () => {
    const withDefault = (h: string, def: number) => ['/a', '/b', '/c'].map((device, i) => ({ device, health: h[i]!, isDefault: i === def }));
    // The primary failed in sync: /b became the default; removing /a is safe.
    expect(planRepair(three, withDefault('DAA', 1), { policy: 'remove', spares: [] })!.removed).toEqual(['/a']);
    // Out of sync: no default leg. Both remove and allocate (a spare resynced from stale legs) are refused.
    for (const policy of ['remove', 'allocate'] as const) {
      let err: unknown;
      try {
        planRepair(three, withDefault('DAA', -1), { policy, spares: ['/s1'] });
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(ControlError);
      expect((err as ControlError).code).toBe('EBUSY');
      expect((err as Error).message).toMatch(/default leg failed while the mirror was out of sync.*only on \/a.*stale data.*repair --force/);
    }
    const forced = planRepair(three, withDefault('DAA', -1), { policy: 'remove', spares: [], force: true })!;
    expect(forced.removed).toEqual(['/a']);
    // Health alone (no engine default known): unchanged behaviour.
    expect(planRepair(three, legs('DAA'), { policy: 'remove', spares: [] })!.removed).toEqual(['/a']);
  });
});
