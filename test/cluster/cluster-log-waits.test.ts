// cluster-log-waits.test.ts — describeWaits (cluster-log-waits.ts), pure: one sentence per wait of a
// cluster log member, naming the message (type, seq) and the nodes it waits on; nothing when it waits for
// nothing. (A member's real pendingWaits: repair-waiting.test.ts.)
import { describe, expect, it } from 'vitest';
import { describeWaits, type PendingFlush, type PendingWaits } from '../../src/cluster/cluster-log-waits.js';

const NOW = 50_000;
const idle: PendingWaits = { group: 'nbdm-log:u', state: null, legs: [], flushes: [], legSets: null, suspectNodes: [], quorate: true };
const flush = (f: Partial<PendingFlush>): PendingFlush => ({
  kind: 'FLUSH',
  seq: 9,
  sentAtMs: NOW - 1200,
  delivered: true,
  acks: 1,
  acksNeeded: 1,
  notAckedBy: [],
  durableWriteBy: null,
  ...f,
});

describe('describeWaits', () => {
  it('nothing pending: no sentence', () => {
    expect(describeWaits(idle, NOW)).toEqual([]);
    expect(describeWaits({ ...idle, quorate: null, flushes: [flush({})] }, NOW)).toEqual([]); // settled on the next check
  });

  it('names each message by type and seq, and the nodes it waits on', () => {
    const w: PendingWaits = {
      ...idle,
      legs: [{ seq: 4, devices: ['/d/a', '/d/s'], sentAtMs: NOW - 10_000 }],
      flushes: [
        flush({ seq: 5, delivered: false }),
        flush({ seq: 6, acks: 0, notAckedBy: [2, 3] }),
        flush({ kind: 'LEG_FAILED', seq: 7, acks: 1, acksNeeded: 2, notAckedBy: [3] }),
        flush({ seq: 8, durableWriteBy: 1 }),
      ],
      legSets: [
        { nodeId: 1, devices: ['/d/a', '/d/s'] },
        { nodeId: 2, devices: null },
      ],
      suspectNodes: [3],
      quorate: false,
    };
    expect(describeWaits(w, NOW)).toEqual([
      'LEGS seq 4 (/d/a /d/s), sent 10000 ms ago: not delivered back',
      'FLUSH seq 5, sent 1200 ms ago: not delivered back',
      'FLUSH seq 6, sent 1200 ms ago: 0/1 acknowledgements, none yet from nodes 2, 3',
      'LEG_FAILED seq 7, sent 1200 ms ago: 1/2 acknowledgements, none yet from node 3',
      'FLUSH seq 8, sent 1200 ms ago: the durable log write by the log server (node 1)',
      "the members' leg sets to agree (writes wait on every node until then): node 1 [/d/a /d/s], node 2 not announced",
      'a quorum view without node 3 (gone with NODEDOWN)',
      'quorum (this node is not quorate)',
    ]);
  });

  it('a member without the state: its join, then a checkpoint', () => {
    expect(describeWaits({ ...idle, state: { joined: false } }, NOW)).toEqual(['the join of nbdm-log:u to be delivered']);
    expect(describeWaits({ ...idle, state: { joined: true } }, NOW)).toEqual(['the log state: a checkpoint from the log server of nbdm-log:u']);
  });
});
