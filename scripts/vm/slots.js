// Machine-wide guest slots: at most NBDM_VM_SLOTS (default 2: one TCG guest per core) guests run at once
// across every process using this cache (vitest runs test files in parallel workers). A slot is a
// directory $cache/slots/<n> holding the owner's pid; a slot whose owner is dead is taken over.
// Owns only slot bookkeeping; callers hold slots for the lifetime of their guests.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { cacheDir } from './build-image.js';

const POLL_MS = 100;

export function slotCount() {
  const n = Number(process.env.NBDM_VM_SLOTS ?? 2);
  if (!Number.isInteger(n) || n < 1) throw new Error(`NBDM_VM_SLOTS must be a positive integer, not "${process.env.NBDM_VM_SLOTS}"`);
  return n;
}

function alive(pid) {
  try { process.kill(pid, 0); return true; } catch (e) { return /** @type {any} */ (e).code === 'EPERM'; }
}

function tryTake(dir) {
  try {
    fs.mkdirSync(dir);
  } catch (e) {
    if (/** @type {any} */ (e).code !== 'EEXIST') throw e;
    let owner = 0;
    try { owner = Number(fs.readFileSync(path.join(dir, 'pid'), 'utf8')); } catch { /* being written */ }
    if (owner > 0 && !alive(owner)) fs.rmSync(dir, { recursive: true, force: true });
    return false;
  }
  fs.writeFileSync(path.join(dir, 'pid'), String(process.pid));
  return true;
}

/**
 * Waits until `count` slots are free and takes them together; returns the release function.
 * @param {number} count
 * @param {{ timeoutMs?: number }} [opts]
 * @returns {Promise<() => void>}
 */
export async function acquireSlots(count, opts = {}) {
  const total = slotCount();
  const want = Math.min(count, total); // a pair on a 1-slot machine still runs (alone)
  const root = path.join(cacheDir(), 'slots');
  fs.mkdirSync(root, { recursive: true });
  const deadline = Date.now() + (opts.timeoutMs ?? 30 * 60_000);
  for (;;) {
    const taken = [];
    for (let i = 0; i < total && taken.length < want; i++) {
      const dir = path.join(root, String(i));
      if (tryTake(dir)) taken.push(dir);
    }
    if (taken.length === want) {
      let released = false;
      return () => {
        if (released) return;
        released = true;
        for (const d of taken) fs.rmSync(d, { recursive: true, force: true });
      };
    }
    for (const d of taken) fs.rmSync(d, { recursive: true, force: true }); // all or nothing: no deadlock
    if (Date.now() > deadline) throw new Error(`no ${want} free guest slots in ${root} before the deadline`);
    await new Promise((r) => setTimeout(r, POLL_MS + Math.floor(Math.random() * POLL_MS)));
  }
}

/**
 * Runs `body` holding `count` slots.
 * @template T
 * @param {number} count
 * @param {() => Promise<T>} body
 * @returns {Promise<T>}
 */
export async function withSlots(count, body) {
  const release = await acquireSlots(count);
  try { return await body(); } finally { release(); }
}
