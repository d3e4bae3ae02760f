// What a server serves: export name -> export. A Map satisfies ExportRegistry, so the control
// layer can add and remove exports while the server runs; lookups happen at option time only.

import type { Export } from '../export.js';

export interface ExportEntry {
  readonly export: Export;
  readonly description?: string;
}

export type ExportRegistry = ReadonlyMap<string, ExportEntry>;

export interface LookupResult {
  readonly name: string;
  readonly entry: ExportEntry;
}

/** Resolve a client-supplied name ("" means the default export); undefined if unknown. */
export function lookupExport(
  registry: ExportRegistry,
  defaultExportName: string | undefined,
  name: string,
): LookupResult | undefined {
  const resolved = name === '' && defaultExportName !== undefined ? defaultExportName : name;
  const entry = registry.get(resolved);
  return entry === undefined ? undefined : { name: resolved, entry };
}
