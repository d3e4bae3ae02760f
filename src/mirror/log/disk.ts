// STUB (signature only): the disk dirty log.
import type { Leg } from '../legs/leg.js';
import type { SyncMode } from './dirty-log.js';
/** device: the log device as a Leg (file, block device or memory leg in tests). */
export interface DiskLogOptions { device: Leg; regionSizeBytes: number; lengthBytes: number; sync: SyncMode }
