// CPU time from /proc, for the bench scripts: a process's (every thread), this process's with its exited
// children (fio, once waited for), the whole machine's (busy and steal), and a meter of what the rest of
// the machine used while something ran.
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';

const CLK_TCK = Number(execFileSync('getconf', ['CLK_TCK']).toString().trim());

/** The fields of /proc/PID/stat after the command name (field 3 is index 0). */
function statFields(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
}

/** utime + stime of every thread of `pid`, in seconds (throws once the process is gone). */
export function processCpuSec(pid) {
  const f = statFields(pid);
  return (Number(f[11]) + Number(f[12])) / CLK_TCK; // utime, stime (fields 14, 15)
}

/** This process's CPU time plus that of its exited children, in seconds. */
export function selfAndChildrenCpuSec() {
  const f = statFields('self');
  return (Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14])) / CLK_TCK; // utime, stime, cutime, cstime
}

/** The machine's CPU time so far, in seconds: busy (user, nice, system, irq, softirq; all CPUs) and steal. */
export function machineCpuSec() {
  const f = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  return { busy: (f[0] + f[1] + f[2] + f[5] + f[6]) / CLK_TCK, steal: (f[7] ?? 0) / CLK_TCK };
}

/**
 * Starts measuring; the returned function ends it and gives the CPU seconds each of `pids` used, and what
 * the rest of the machine (not this process, its exited children or `pids`) and steal took, in CPUs on
 * average over the wall time. A pid that is gone counts NaN.
 */
export function otherCpuMeter(pids) {
  const cpuOf = (pid) => {
    try {
      return processCpuSec(pid);
    } catch {
      return NaN;
    }
  };
  const pids0 = pids.map(cpuOf);
  const machine0 = machineCpuSec();
  const ours0 = selfAndChildrenCpuSec();
  const t0 = process.hrtime.bigint();
  return () => {
    const wallSec = Number(process.hrtime.bigint() - t0) / 1e9;
    const machine1 = machineCpuSec();
    const pidsCpu = pids.map((pid, i) => cpuOf(pid) - pids0[i]);
    const others = machine1.busy - machine0.busy - (selfAndChildrenCpuSec() - ours0) - pidsCpu.reduce((a, b) => a + b, 0);
    return { pidsCpu, otherCpus: Math.max(0, others) / wallSec, stealCpus: (machine1.steal - machine0.steal) / wallSec };
  };
}
