// FaultyLeg: a Leg wrapper that injects errors, like nbdkit's error filter (filters/error/error.c).
// Owns: per-operation fault rules (errno, rate, before/after, optional byte range), the arm/disarm
// switch (usable while I/O runs: the rule is read when each operation starts), and a record of every
// injected fault handed to the onFault callback. Randomness comes from an injected RandomSource, so a
// seeded simulator replays exactly; a rate of 1 (the default) never consumes a random number.
//
// 'before' (default): the error is returned and the inner leg is NOT called (nbdkit's behaviour).
// 'after': the inner operation runs, then the error is returned (a write that landed but was reported
// failed: the mirror must still treat the leg as failed).

import { strict as assert } from 'node:assert';
import { type Errno, ExportError } from '../../nbd/export.js';
import type { RandomSource } from '../scheduler.js';
import { LEG_OPS, LegFilter, type LegOp } from './filter.js';
import type { Leg } from './leg.js';

export { LEG_OPS, type LegOp } from './filter.js';

export interface FaultRule {
  readonly errno: Errno;
  /** Probability in [0, 1] that one operation fails. */
  readonly ratePerOp: number;
  readonly when: 'before' | 'after';
  /** Only operations overlapping [offsetBytes, offsetBytes+lengthBytes) fail (a bad area); flush always matches. */
  readonly range?: { readonly offsetBytes: number; readonly lengthBytes: number };
}

export interface InjectedFault {
  /** Running number of injected faults on this wrapper, from 1. */
  readonly seq: number;
  readonly device: string;
  readonly op: LegOp;
  readonly offsetBytes: number;
  readonly lengthBytes: number;
  readonly errno: Errno;
  readonly when: 'before' | 'after';
}

export interface FaultyLegOptions {
  /** Needed only for rates strictly between 0 and 1. */
  readonly random?: RandomSource;
  /** Rules armed from the start. */
  readonly rules?: Partial<Record<LegOp, Partial<FaultRule>>>;
  /** Called once per injected fault (the "log line"). */
  readonly onFault?: (fault: InjectedFault) => void;
}

const RULE_DEFAULTS: FaultRule = { errno: 'EIO', ratePerOp: 1, when: 'before' };

function completeRule(rule: Partial<FaultRule>): FaultRule {
  const r = { ...RULE_DEFAULTS, ...rule };
  assert(r.ratePerOp >= 0 && r.ratePerOp <= 1, `ratePerOp must be in [0, 1], not ${r.ratePerOp}`);
  return r;
}

export class FaultyLeg extends LegFilter {
  private readonly rules = new Map<LegOp, FaultRule>();
  private readonly random: RandomSource | undefined;
  private readonly onFault: ((fault: InjectedFault) => void) | undefined;
  private injected = 0;

  constructor(inner: Leg, opts: FaultyLegOptions = {}) {
    super(inner);
    this.random = opts.random;
    this.onFault = opts.onFault;
    for (const op of LEG_OPS) {
      const rule = opts.rules?.[op];
      if (rule) this.arm(op, rule);
    }
  }

  /** Faults injected so far. */
  get injectedCount(): number {
    return this.injected;
  }

  /** Arm one, several or all operation kinds (replacing their rule). Takes effect for operations started afterwards. */
  arm(ops: LegOp | readonly LegOp[] | 'all', rule: Partial<FaultRule> = {}): void {
    const full = completeRule(rule);
    assert(full.ratePerOp === 0 || full.ratePerOp === 1 || this.random !== undefined, 'a fractional ratePerOp needs a random source');
    for (const op of opsOf(ops)) this.rules.set(op, full);
  }

  disarm(ops: LegOp | readonly LegOp[] | 'all' = 'all'): void {
    for (const op of opsOf(ops)) this.rules.delete(op);
  }

  isArmed(op: LegOp): boolean {
    return this.rules.has(op);
  }

  /** The rule that fires for this operation, or undefined. Consumes a random number only for fractional rates. */
  private decide(op: LegOp, offsetBytes: number, lengthBytes: number): FaultRule | undefined {
    const rule = this.rules.get(op);
    if (rule === undefined || rule.ratePerOp === 0) return undefined;
    if (rule.range && op !== 'flush') {
      const end = rule.range.offsetBytes + rule.range.lengthBytes;
      if (offsetBytes >= end || offsetBytes + lengthBytes <= rule.range.offsetBytes) return undefined;
    }
    if (rule.ratePerOp < 1 && (this.random as RandomSource)() >= rule.ratePerOp) return undefined;
    return rule;
  }

  private fault(op: LegOp, rule: FaultRule, offsetBytes: number, lengthBytes: number): ExportError {
    const seq = ++this.injected;
    this.onFault?.({ seq, device: this.device, op, offsetBytes, lengthBytes, errno: rule.errno, when: rule.when });
    return new ExportError(rule.errno, `${this.device}: injected ${rule.errno} on ${op} of ${lengthBytes} bytes at ${offsetBytes}`);
  }

  protected async run(op: LegOp, offsetBytes: number, lengthBytes: number, call: () => Promise<void>): Promise<void> {
    const rule = this.decide(op, offsetBytes, lengthBytes);
    if (rule === undefined) return call();
    if (rule.when === 'before') throw this.fault(op, rule, offsetBytes, lengthBytes);
    await call();
    throw this.fault(op, rule, offsetBytes, lengthBytes);
  }
}

function opsOf(ops: LegOp | readonly LegOp[] | 'all'): readonly LegOp[] {
  if (ops === 'all') return LEG_OPS;
  if (typeof ops === 'string') return [ops];
  return ops;
}
