// A mirror leg served by nbdkit with the error filter over a file: errors (EIO on every request) are
// injected only while TRIGGER exists (`arm()` creates it). The plain case of faults-legs.ts's leg
// (no delay filter), under the name the older fault, cluster and dashboard tests use.
import { startFaultLeg, type FaultLeg } from './faults-legs.js';

export type NbdkitLeg = FaultLeg;

export function startNbdkitErrorLeg(dir: string, name: string, sizeBytes: number): Promise<NbdkitLeg> {
  return startFaultLeg(dir, name, sizeBytes);
}
