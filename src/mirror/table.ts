// Table lines: parse dmsetup-style `linear` and `mirror` table lines into a TableSpec and format a
// TableSpec back into a line. Pure: opens nothing, reads no clock; every malformed line is rejected
// with a TableError naming the offending token and its position (1-based token index and column).
//
// Forms (sizes and offsets in 512-byte sectors; see /work/shared/spec/mirror-semantics.md §1):
//   0 <len> linear <dev> <offset>
//   0 <len> mirror core <#> <region_size> [sync|nosync]                        <#legs> <dev> <off>... [<#f> <f>...]
//   0 <len> mirror disk <#> <log_dev> <region_size> [sync|nosync]              ...
//   0 <len> mirror userspace <#> <uuid> [integrated_flush] clustered-core|clustered-disk [log_dev]
//                                <region_size> [sync|nosync] [block_on_error]  ...
//   old:  0 <len> mirror cluster <#> core|disk <uuid> [log_dev] <region_size> [sync|nosync] [block_on_error] ...
//   old:  0 <len> mirror clustered_disk <#> <log_dev> <region_size> [sync|nosync] <uuid> [block_on_error] ...
//   old:  0 <len> mirror clustered_core <#> <region_size> [sync|nosync] <uuid> [block_on_error] ...
// Features: handle_errors, keep_log (keep_log requires handle_errors); block_on_error == handle_errors.
//
// `log.syntax` remembers which of the forms was written so formatTable echoes the table in the form the
// user gave it (as dm echoes a target's arguments); parse(format(spec)) deep-equals spec for every spec.

import { type Sectors, sectors } from '../units.js';

/** Kernel limit (dm-raid1 MAX_NR_MIRRORS): at least 2, at most 9 legs in one mirror. */
export const MIRROR_LEGS_MIN = 2;
export const MIRROR_LEGS_MAX = 9;
/** DM_UUID_LEN is 129 including the NUL. */
export const UUID_CHARS_MAX = 128;
/** Smallest region: the kernel requires a power of two of at least 2 sectors. */
export const REGION_SIZE_SECTORS_MIN = 2;
/** Bytes addressed through a table must stay exact in a JS number. */
const SECTORS_SAFE_MAX = Math.floor(Number.MAX_SAFE_INTEGER / 512);

export class TableError extends Error {
  constructor(
    message: string,
    /** The offending token as written, or '<end of line>' when a token is missing. */
    readonly token: string,
    /** 1-based index of the token in the line (line length + 1 when missing). */
    readonly tokenIndex: number,
    /** 1-based column of the token in the line. */
    readonly column: number,
  ) {
    super(message);
    this.name = 'TableError';
  }
}

export interface LegSpec {
  /** Path or NBD URI exactly as written in the table. */
  readonly device: string;
  readonly offsetSectors: Sectors;
}

export type SyncMode = 'default' | 'sync' | 'nosync';

/**
 * How the log was written: 'dm' = `core`/`disk`, 'userspace' = LVM's cluster form, the other three are the
 * old cluster mirror forms. Only formatting depends on it.
 */
export type LogSyntax = 'dm' | 'userspace' | 'cluster' | 'clustered_disk' | 'clustered_core';

export interface LogSpec {
  /** core = bitmap in memory; disk = bitmap persisted on `device`. */
  readonly kind: 'core' | 'disk';
  /** The log device (disk logs only). */
  readonly device?: string;
  readonly regionSizeSectors: Sectors;
  readonly sync: SyncMode;
  /** A cluster log shared by several nodes under `uuid`. */
  readonly clustered: boolean;
  /** Present exactly when clustered. */
  readonly uuid?: string;
  /** userspace `integrated_flush`: marks travel with the flush. */
  readonly integratedFlush: boolean;
  readonly syntax: LogSyntax;
}

export interface MirrorFeatures {
  /** handle_errors (or the old block_on_error): hold failed writes until the table is reloaded. */
  readonly handleErrors: boolean;
  /** keep_log: keep the log device even if it fails (requires handleErrors). */
  readonly keepLog: boolean;
}

export interface LinearTableSpec {
  readonly kind: 'linear';
  /** Always 0: nbd-mirror serves one target per volume. */
  readonly startSectors: Sectors;
  readonly lengthSectors: Sectors;
  readonly leg: LegSpec;
}

export interface MirrorTableSpec {
  readonly kind: 'mirror';
  readonly startSectors: Sectors;
  readonly lengthSectors: Sectors;
  readonly log: LogSpec;
  /** legs[0] is the default (primary) leg. */
  readonly legs: readonly LegSpec[];
  readonly features: MirrorFeatures;
}

export type TableSpec = LinearTableSpec | MirrorTableSpec;

// ---------------------------------------------------------------------------------------------------
// Tokenizer and cursor

interface Token {
  readonly text: string;
  readonly index: number; // 1-based
  readonly column: number; // 1-based
}

function tokenize(line: string): Token[] {
  const tokens: Token[] = [];
  const re = /\S+/g;
  let m: RegExpExecArray | null;
  while ((m = re.exec(line)) !== null) {
    tokens.push({ text: m[0], index: tokens.length + 1, column: m.index + 1 });
  }
  return tokens;
}

class Cursor {
  private pos = 0;
  constructor(
    readonly tokens: readonly Token[],
    private readonly lineLength: number,
  ) {}

  get remaining(): number {
    return this.tokens.length - this.pos;
  }

  peek(ahead = 0): Token | undefined {
    return this.tokens[this.pos + ahead];
  }

  /** The next token, or a TableError saying what was expected there. */
  next(what: string): Token {
    const t = this.tokens[this.pos];
    if (t === undefined) throw this.missing(what);
    this.pos++;
    return t;
  }

  missing(what: string): TableError {
    return new TableError(
      `token ${this.tokens.length + 1} '<end of line>' (column ${this.lineLength + 1}): missing ${what}`,
      '<end of line>',
      this.tokens.length + 1,
      this.lineLength + 1,
    );
  }
}

function fail(t: Token, problem: string): TableError {
  return new TableError(`token ${t.index} '${t.text}' (column ${t.column}): ${problem}`, t.text, t.index, t.column);
}

const DECIMAL = /^[0-9]+$/;

function integer(t: Token, what: string): number {
  if (!DECIMAL.test(t.text)) throw fail(t, `${what} must be a non-negative decimal integer`);
  const n = Number(t.text);
  if (!Number.isSafeInteger(n) || n > SECTORS_SAFE_MAX) throw fail(t, `${what} is too large (max ${SECTORS_SAFE_MAX})`);
  return n;
}

function sectorCount(t: Token, what: string): Sectors {
  return sectors(integer(t, what));
}

function isPowerOfTwo(n: number): boolean {
  // Region sizes stay far below 2^31 in practice, but avoid 32-bit bit tricks for large numbers anyway.
  return n > 0 && Number.isInteger(Math.log2(n)) && 2 ** Math.log2(n) === n;
}

// ---------------------------------------------------------------------------------------------------
// Parser

export function parseTable(line: string): TableSpec {
  const tokens = tokenize(line);
  const cur = new Cursor(tokens, line.length);
  if (tokens.length === 0) throw cur.missing('<start> (the line is empty)');

  const startTok = cur.next('<start>');
  const start = sectorCount(startTok, 'start');
  if (start !== 0) {
    throw fail(startTok, 'start must be 0: nbd-mirror serves one target per volume, so a table has one line starting at 0');
  }
  const lengthTok = cur.next('<length>');
  const length = sectorCount(lengthTok, 'length');
  if (length === 0) throw fail(lengthTok, 'length must be at least 1 sector');

  const typeTok = cur.next('target type (linear or mirror)');
  let spec: TableSpec;
  if (typeTok.text === 'linear') {
    const leg = parseLeg(cur);
    spec = { kind: 'linear', startSectors: sectors(0), lengthSectors: length, leg };
  } else if (typeTok.text === 'mirror') {
    spec = parseMirror(cur, length, lengthTok);
  } else {
    throw fail(typeTok, "unknown target type: expected 'linear' or 'mirror'");
  }
  const extra = cur.peek();
  if (extra !== undefined) throw fail(extra, 'unexpected trailing token after a complete table');
  return spec;
}

function parseLeg(cur: Cursor): LegSpec {
  const devTok = cur.next('<dev>');
  const offTok = cur.next(`<offset> for device '${devTok.text}'`);
  const offsetSectors = sectorCount(offTok, `offset of device '${devTok.text}'`);
  return { device: devTok.text, offsetSectors };
}

interface ParsedLog {
  log: LogSpec;
  blockOnError: boolean;
  /** Tokens naming devices, for the duplicate check. */
  deviceTokens: Token[];
}

function parseMirror(cur: Cursor, length: Sectors, lengthTok: Token): MirrorTableSpec {
  const logTypeTok = cur.next('<log_type> (core, disk, userspace, cluster, clustered_disk or clustered_core)');
  const countTok = cur.next(`<#log_args> for log type '${logTypeTok.text}'`);
  const count = integer(countTok, 'log argument count');
  if (cur.remaining < count) {
    throw fail(countTok, `log argument count says ${count} but only ${cur.remaining} tokens follow`);
  }
  const args: Token[] = [];
  for (let i = 0; i < count; i++) args.push(cur.next('log argument'));

  let parsed: ParsedLogWithRegion;
  switch (logTypeTok.text) {
    case 'core':
    case 'disk':
      parsed = parseDmLog(logTypeTok.text, args, countTok);
      break;
    case 'userspace':
      parsed = parseUserspaceLog(args, countTok);
      break;
    case 'cluster':
      parsed = parseOldClusterLog(args, countTok);
      break;
    case 'clustered_disk':
    case 'clustered_core':
      parsed = parseOldClusteredLog(logTypeTok.text, args, countTok);
      break;
    default:
      throw fail(
        logTypeTok,
        'unknown log type: expected core, disk, userspace, cluster, clustered_disk or clustered_core',
      );
  }

  const regionTok = parsed.regionTok;
  const region = parsed.log.regionSizeSectors;
  if (!isPowerOfTwo(region) || region < REGION_SIZE_SECTORS_MIN) {
    throw fail(regionTok, `region_size must be a power of two of at least ${REGION_SIZE_SECTORS_MIN} sectors`);
  }
  if (region > length) {
    throw fail(regionTok, `region_size ${region} is larger than the target length ${length} (token ${lengthTok.index})`);
  }

  const legCountTok = cur.next('<#legs>');
  const legCount = integer(legCountTok, 'leg count');
  if (legCount < MIRROR_LEGS_MIN || legCount > MIRROR_LEGS_MAX) {
    throw fail(legCountTok, `a mirror needs ${MIRROR_LEGS_MIN}..${MIRROR_LEGS_MAX} legs`);
  }
  if (cur.remaining < legCount * 2) {
    throw fail(
      legCountTok,
      `leg count says ${legCount} legs (${legCount * 2} tokens: <dev> <offset> each) but only ${cur.remaining} tokens follow`,
    );
  }
  const legs: LegSpec[] = [];
  const deviceTokens = [...parsed.deviceTokens];
  for (let i = 0; i < legCount; i++) {
    const devTok = cur.peek() as Token;
    legs.push(parseLeg(cur));
    deviceTokens.push(devTok);
  }
  const seen = new Map<string, Token>();
  for (const t of deviceTokens) {
    const first = seen.get(t.text);
    if (first !== undefined) {
      throw fail(t, `device is listed twice (first at token ${first.index}); each leg and the log need their own device`);
    }
    seen.set(t.text, t);
  }

  let handleErrors = parsed.blockOnError;
  let keepLog = false;
  let keepLogTok: Token | undefined;
  const featureCountTok = cur.peek();
  if (featureCountTok !== undefined) {
    cur.next('<#features>');
    // "0" features is accepted (formatTable never writes it).
    const featureCount = integer(featureCountTok, 'feature count');
    if (cur.remaining !== featureCount) {
      const problem =
        cur.remaining < featureCount
          ? `feature count says ${featureCount} but only ${cur.remaining} tokens follow`
          : `feature count says ${featureCount} but ${cur.remaining} tokens follow`;
      if (cur.remaining > featureCount) throw fail(cur.tokens[featureCountTok.index + featureCount] as Token, problem);
      throw fail(featureCountTok, problem);
    }
    const seenFeatures = new Set<string>();
    for (let i = 0; i < featureCount; i++) {
      const f = cur.next('feature');
      if (seenFeatures.has(f.text)) throw fail(f, 'feature given twice');
      seenFeatures.add(f.text);
      if (f.text === 'handle_errors') handleErrors = true;
      else if (f.text === 'keep_log') {
        keepLog = true;
        keepLogTok = f;
      } else throw fail(f, "unknown feature: expected 'handle_errors' or 'keep_log'");
    }
  }
  if (keepLog && !handleErrors) {
    throw fail(keepLogTok as Token, "keep_log requires handle_errors (or block_on_error)");
  }

  return {
    kind: 'mirror',
    startSectors: sectors(0),
    lengthSectors: length,
    log: parsed.log,
    legs,
    features: { handleErrors, keepLog },
  };
}

interface ParsedLogWithRegion extends ParsedLog {
  regionTok: Token;
}

/** The parsed form shared by every clustered log syntax. */
function clusteredLog(p: {
  kind: 'core' | 'disk';
  deviceTok: Token | undefined;
  regionTok: Token;
  regionSizeSectors: Sectors;
  sync: SyncMode;
  uuid: string;
  integratedFlush: boolean;
  syntax: LogSyntax;
  blockOnError: boolean;
}): ParsedLogWithRegion {
  return {
    log: {
      kind: p.kind,
      ...(p.deviceTok ? { device: p.deviceTok.text } : {}),
      regionSizeSectors: p.regionSizeSectors,
      sync: p.sync,
      clustered: true,
      uuid: p.uuid,
      integratedFlush: p.integratedFlush,
      syntax: p.syntax,
    },
    blockOnError: p.blockOnError,
    deviceTokens: p.deviceTok ? [p.deviceTok] : [],
    regionTok: p.regionTok,
  };
}

function syncMode(t: Token): SyncMode {
  if (t.text === 'sync') return 'sync';
  if (t.text === 'nosync') return 'nosync';
  throw fail(t, "expected 'sync' or 'nosync'");
}

function argCountError(countTok: Token, logType: string, expected: string, got: number): TableError {
  return fail(countTok, `log type '${logType}' takes ${expected} arguments, not ${got}`);
}

/** core <#> <region_size> [sync|nosync];  disk <#> <log_dev> <region_size> [sync|nosync] */
function parseDmLog(kind: 'core' | 'disk', args: Token[], countTok: Token): ParsedLogWithRegion {
  const fixed = kind === 'core' ? 1 : 2;
  if (args.length !== fixed && args.length !== fixed + 1) {
    throw argCountError(countTok, kind, `${fixed} or ${fixed + 1}`, args.length);
  }
  const deviceTok = kind === 'disk' ? args[0] : undefined;
  const regionTok = args[fixed - 1] as Token;
  const syncTok = args[fixed];
  return {
    log: {
      kind,
      ...(deviceTok ? { device: deviceTok.text } : {}),
      regionSizeSectors: sectorCount(regionTok, 'region_size'),
      sync: syncTok ? syncMode(syncTok) : 'default',
      clustered: false,
      integratedFlush: false,
      syntax: 'dm',
    },
    blockOnError: false,
    deviceTokens: deviceTok ? [deviceTok] : [],
    regionTok,
  };
}

function checkUuid(t: Token): string {
  if (t.text.length > UUID_CHARS_MAX) throw fail(t, `uuid is ${t.text.length} characters, at most ${UUID_CHARS_MAX} allowed`);
  return t.text;
}

/**
 * Strip trailing option words (sync|nosync, block_on_error) from a log argument list, in any order, each
 * at most once. Returns the remaining (positional) arguments.
 */
function splitOptions(
  args: Token[],
  minPositional: number,
): { positional: Token[]; sync: SyncMode; blockOnError: boolean } {
  let end = args.length;
  let sync: SyncMode = 'default';
  let blockOnError = false;
  while (end > minPositional) {
    const t = args[end - 1] as Token;
    if (t.text === 'block_on_error') {
      if (blockOnError) throw fail(t, 'block_on_error given twice');
      blockOnError = true;
    } else if (t.text === 'sync' || t.text === 'nosync') {
      if (sync !== 'default') throw fail(t, 'sync/nosync given twice');
      sync = syncMode(t);
    } else break;
    end--;
  }
  return { positional: args.slice(0, end), sync, blockOnError };
}

/** userspace <#> <uuid> [integrated_flush] clustered-core|clustered-disk [log_dev] <region_size> [[no]sync] [block_on_error] */
function parseUserspaceLog(args: Token[], countTok: Token): ParsedLogWithRegion {
  if (args.length < 3) throw argCountError(countTok, 'userspace', 'at least 3', args.length);
  const uuidTok = args[0] as Token;
  const uuid = checkUuid(uuidTok);
  let i = 1;
  let integratedFlush = false;
  if ((args[i] as Token).text === 'integrated_flush') {
    integratedFlush = true;
    i++;
  }
  const typeTok = args[i];
  if (typeTok === undefined) throw argCountError(countTok, 'userspace', 'at least 4 (with integrated_flush)', args.length);
  let kind: 'core' | 'disk';
  if (typeTok.text === 'clustered-core') kind = 'core';
  else if (typeTok.text === 'clustered-disk') kind = 'disk';
  else throw fail(typeTok, "expected 'clustered-core' or 'clustered-disk'");
  i++;
  const rest = args.slice(i);
  const fixed = kind === 'disk' ? 2 : 1;
  const { positional, sync, blockOnError } = splitOptions(rest, fixed);
  if (positional.length !== fixed) {
    if (positional.length > fixed) throw fail(positional[fixed] as Token, `unexpected argument to ${typeTok.text}`);
    throw argCountError(countTok, `userspace ${typeTok.text}`, `${fixed} positional`, positional.length);
  }
  const deviceTok = kind === 'disk' ? positional[0] : undefined;
  const regionTok = positional[fixed - 1] as Token;
  const regionSizeSectors = sectorCount(regionTok, 'region_size');
  return clusteredLog({ kind, deviceTok, regionTok, regionSizeSectors, sync, uuid, integratedFlush, syntax: 'userspace', blockOnError });
}

/** cluster <#> core|disk <uuid> [log_dev] <region_size> [[no]sync] [block_on_error] */
function parseOldClusterLog(args: Token[], countTok: Token): ParsedLogWithRegion {
  const typeTok = args[0];
  if (typeTok === undefined) throw argCountError(countTok, 'cluster', 'at least 3', 0);
  let kind: 'core' | 'disk';
  if (typeTok.text === 'core') kind = 'core';
  else if (typeTok.text === 'disk') kind = 'disk';
  else throw fail(typeTok, "expected 'core' or 'disk' after the cluster log argument count");
  const fixed = kind === 'disk' ? 3 : 2; // uuid [log_dev] region_size
  const { positional, sync, blockOnError } = splitOptions(args.slice(1), fixed);
  if (positional.length !== fixed) {
    if (positional.length > fixed) throw fail(positional[fixed] as Token, `unexpected argument to cluster ${kind} log`);
    throw argCountError(countTok, `cluster ${kind}`, `at least ${fixed + 1}`, args.length);
  }
  const uuidTok = positional[0] as Token;
  const deviceTok = kind === 'disk' ? positional[1] : undefined;
  const regionTok = positional[fixed - 1] as Token;
  const regionSizeSectors = sectorCount(regionTok, 'region_size');
  const uuid = checkUuid(uuidTok);
  return clusteredLog({ kind, deviceTok, regionTok, regionSizeSectors, sync, uuid, integratedFlush: false, syntax: 'cluster', blockOnError });
}

/**
 * clustered_disk <#> <log_dev> <region_size> [[no]sync] <uuid> [block_on_error]
 * clustered_core <#> <region_size> [[no]sync] <uuid> [block_on_error]
 */
function parseOldClusteredLog(
  logType: 'clustered_disk' | 'clustered_core',
  args: Token[],
  countTok: Token,
): ParsedLogWithRegion {
  const kind = logType === 'clustered_disk' ? 'disk' : 'core';
  let end = args.length;
  let blockOnError = false;
  if (end > 0 && (args[end - 1] as Token).text === 'block_on_error') {
    blockOnError = true;
    end--;
  }
  const fixed = kind === 'disk' ? 3 : 2; // [log_dev] region_size uuid
  if (end !== fixed && end !== fixed + 1) {
    throw argCountError(countTok, logType, `${fixed}..${fixed + 2}`, args.length);
  }
  const deviceTok = kind === 'disk' ? args[0] : undefined;
  const regionTok = args[fixed - 2] as Token;
  let sync: SyncMode = 'default';
  if (end === fixed + 1) sync = syncMode(args[fixed - 1] as Token);
  const uuidTok = args[end - 1] as Token;
  const regionSizeSectors = sectorCount(regionTok, 'region_size');
  const uuid = checkUuid(uuidTok);
  return clusteredLog({ kind, deviceTok, regionTok, regionSizeSectors, sync, uuid, integratedFlush: false, syntax: logType, blockOnError });
}

// ---------------------------------------------------------------------------------------------------
// Formatter

/** The table line for `spec`, in the syntax the spec was parsed from (log.syntax). */
export function formatTable(spec: TableSpec): string {
  if (spec.kind === 'linear') {
    return `${spec.startSectors} ${spec.lengthSectors} linear ${spec.leg.device} ${spec.leg.offsetSectors}`;
  }
  return `${spec.startSectors} ${spec.lengthSectors} mirror ${formatMirrorArgs(spec)}`;
}

/**
 * The mirror target's arguments after `mirror` (what dmsetup `table` prints after the target type):
 * `<log_type> <#args> <args> <#legs> <dev> <offset>... [<n> handle_errors [keep_log]]`.
 */
export function formatMirrorArgs(spec: MirrorTableSpec): string {
  const { log, features } = spec;
  if ((log.syntax === 'dm') === log.clustered) {
    throw new TypeError(`log syntax '${log.syntax}' does not match clustered=${log.clustered}`);
  }
  const syncArgs = log.sync === 'default' ? [] : [log.sync];
  let logType: string;
  let logArgs: string[];
  // Old cluster forms carry handle_errors as the block_on_error log argument.
  let errorsInLog = false;
  switch (log.syntax) {
    case 'dm':
      logType = log.kind;
      logArgs = [...(log.kind === 'disk' ? [requireDevice(log)] : []), String(log.regionSizeSectors), ...syncArgs];
      break;
    case 'userspace':
      logType = 'userspace';
      logArgs = [
        requireUuid(log),
        ...(log.integratedFlush ? ['integrated_flush'] : []),
        log.kind === 'disk' ? 'clustered-disk' : 'clustered-core',
        ...(log.kind === 'disk' ? [requireDevice(log)] : []),
        String(log.regionSizeSectors),
        ...syncArgs,
      ];
      break;
    case 'cluster':
      logType = 'cluster';
      errorsInLog = features.handleErrors;
      logArgs = [
        log.kind,
        requireUuid(log),
        ...(log.kind === 'disk' ? [requireDevice(log)] : []),
        String(log.regionSizeSectors),
        ...syncArgs,
        ...(errorsInLog ? ['block_on_error'] : []),
      ];
      break;
    case 'clustered_disk':
    case 'clustered_core':
      logType = log.syntax;
      errorsInLog = features.handleErrors;
      logArgs = [
        ...(log.syntax === 'clustered_disk' ? [requireDevice(log)] : []),
        String(log.regionSizeSectors),
        ...syncArgs,
        requireUuid(log),
        ...(errorsInLog ? ['block_on_error'] : []),
      ];
      break;
  }
  const legArgs = spec.legs.flatMap((l) => [l.device, String(l.offsetSectors)]);
  const featureArgs = [
    ...(features.handleErrors && !errorsInLog ? ['handle_errors'] : []),
    ...(features.keepLog ? ['keep_log'] : []),
  ];
  const parts = [logType, String(logArgs.length), ...logArgs, String(spec.legs.length), ...legArgs];
  if (featureArgs.length > 0) parts.push(String(featureArgs.length), ...featureArgs);
  return parts.join(' ');
}

function requireDevice(log: LogSpec): string {
  if (log.device === undefined) throw new TypeError('disk log spec without a device');
  return log.device;
}

function requireUuid(log: LogSpec): string {
  if (log.uuid === undefined) throw new TypeError('clustered log spec without a uuid');
  return log.uuid;
}

/** Number of regions: the last one may be partial. */
export function regionCount(spec: MirrorTableSpec): number {
  return Math.ceil(spec.lengthSectors / spec.log.regionSizeSectors);
}
