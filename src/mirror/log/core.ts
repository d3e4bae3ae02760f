// STUB (signature only): the core (in-memory) dirty log.
import type { SyncMode } from './dirty-log.js';
export interface CoreLogOptions { regionSizeBytes: number; lengthBytes: number; sync: SyncMode }
