// Turns the serve command's inputs (--table/--name pairs, --table-file contents) into a list of named
// exports and the default export name. Pure: reading the files is the caller's job, so tests feed text.
// Every rejection is a UsageError naming where the bad input came from (`--table #2`, `FILE:LINE`).
//
// Naming rules (README "Export names"):
// - `--table` and `--name` pair in order; when both are given their counts must match.
// - exactly one table in total and no name: it is served as DEFAULT_SINGLE_EXPORT_NAME ("volume").
// - table-file lines are `NAME: <table>` or a bare `<table>`; a bare line is named `volume<N>` (N = its
//   position among the file's tables, from 0) unless it is the only table served.
// - the empty export name "" (what nbd-client, qemu and nbdinfo ask for by default) means the first export.
// - names must be unique, non-empty, at most NBD_EXPORT_NAME_BYTES_MAX bytes, without control characters.
import { UsageError } from './usage-error.js';

export const DEFAULT_SINGLE_EXPORT_NAME = 'volume';
/** The NBD protocol's limit on an export name (NBD_MAX_STRING). */
export const NBD_EXPORT_NAME_BYTES_MAX = 4096;

export interface PlannedExport {
  readonly name: string;
  readonly tableLine: string;
  /** Where the table came from, for messages: `--table #1`, `tables.conf:3`. */
  readonly source: string;
}

export interface ServePlan {
  readonly exports: readonly PlannedExport[];
  /** What an empty export name ("") means: the first export. */
  readonly defaultExportName: string;
}

export interface ServeInputs {
  readonly tables: readonly string[];
  readonly names: readonly string[];
  readonly tableFiles: readonly { readonly path: string; readonly text: string }[];
}

interface FileEntry {
  readonly name: string | undefined;
  readonly tableLine: string;
  readonly source: string;
}

/** `NAME: <table>` or `<table>`; blank lines and lines starting with # are skipped. */
export function parseTableFile(text: string, path: string): FileEntry[] {
  const entries: FileEntry[] = [];
  const lines = text.split(/\r?\n/);
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!.trim();
    if (line.length === 0 || line.startsWith('#')) continue;
    const source = `${path}:${i + 1}`;
    const firstToken = line.split(/\s+/, 1)[0]!;
    if (firstToken.endsWith(':')) {
      const name = firstToken.slice(0, -1);
      const tableLine = line.slice(firstToken.length).trim();
      if (name.length === 0) throw new UsageError(`${source}: empty export name before ":"`);
      if (tableLine.length === 0) throw new UsageError(`${source}: export "${name}" has no table after the ":"`);
      entries.push({ name, tableLine, source });
    } else {
      entries.push({ name: undefined, tableLine: line, source });
    }
  }
  return entries;
}

export function buildServePlan(inputs: ServeInputs): ServePlan {
  const { tables, names } = inputs;
  const fileEntries = inputs.tableFiles.flatMap((f) => {
    const entries = parseTableFile(f.text, f.path);
    if (entries.length === 0) throw new UsageError(`--table-file ${f.path}: no tables in the file`);
    return entries.map((e, indexInFile) => ({ ...e, indexInFile }));
  });
  const totalTables = tables.length + fileEntries.length;
  if (totalTables === 0) throw new UsageError('nothing to serve: give --table LINE or --table-file FILE');
  if (names.length > 0 && names.length !== tables.length) {
    throw new UsageError(
      `--name and --table pair in order: got ${tables.length} --table and ${names.length} --name`,
    );
  }
  if (names.length === 0 && tables.length > 1) {
    throw new UsageError(`${tables.length} --table given without --name: name each export (--table LINE --name NAME ...)`);
  }

  const exports: PlannedExport[] = [];
  tables.forEach((tableLine, i) => {
    const source = `--table #${i + 1}`;
    if (tableLine.trim().length === 0) throw new UsageError(`${source}: empty table`);
    exports.push({ name: names[i] ?? DEFAULT_SINGLE_EXPORT_NAME, tableLine: tableLine.trim(), source });
  });
  for (const e of fileEntries) {
    const name = e.name ?? (totalTables === 1 ? DEFAULT_SINGLE_EXPORT_NAME : `${DEFAULT_SINGLE_EXPORT_NAME}${e.indexInFile}`);
    exports.push({ name, tableLine: e.tableLine, source: e.source });
  }

  const seen = new Map<string, string>();
  for (const e of exports) {
    checkExportName(e.name, e.source);
    const earlier = seen.get(e.name);
    if (earlier !== undefined) throw new UsageError(`duplicate export name "${e.name}" (${earlier} and ${e.source})`);
    seen.set(e.name, e.source);
  }
  return { exports, defaultExportName: exports[0]!.name };
}

function checkExportName(name: string, source: string): void {
  if (name.length === 0) throw new UsageError(`${source}: empty export name (the empty name means the first export)`);
  if (Buffer.byteLength(name) > NBD_EXPORT_NAME_BYTES_MAX) {
    throw new UsageError(`${source}: export name is longer than ${NBD_EXPORT_NAME_BYTES_MAX} bytes`);
  }
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f]/.test(name)) throw new UsageError(`${source}: export name contains a control character`);
}
