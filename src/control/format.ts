// dmsetup's text formats for the CLI, from the control API's JSON answers. Pure functions, no I/O.
//   ls:      `<name>\t(<target>)` per volume, or "No devices found" (dmsetup ls prints `(major:minor)`;
//            a userspace volume has none, so the target type stands there).
//   status:  `<start> <length> <target> <params>`; several volumes: `<name>: <line>` each.
//   table:   the same shapes with the table line.
//   info:    dmsetup's long info block (labels padded to 19 columns), a blank line after each volume.
//            "Major, minor" is left out (no kernel device); nbd-mirror adds Size, Held writes, Queued
//            requests and Legs after the dm lines.
import type { LegState } from './engine.js';
import type { VolumeInfo } from './volumes.js';

export interface LsEntry {
  readonly name: string;
  readonly target: string;
  readonly state: string;
  readonly eventNr: number;
}

export function formatLs(volumes: readonly LsEntry[]): string {
  if (volumes.length === 0) return 'No devices found\n';
  return volumes.map((v) => `${v.name}\t(${v.target})\n`).join('');
}

/** One line per volume; the name prefix only when several volumes are listed (as dmsetup). */
export function formatPerVolume(lines: readonly { name: string; text: string }[], single: boolean): string {
  if (lines.length === 0) return 'No devices found\n';
  if (single) return lines.map((l) => `${l.text}\n`).join('');
  return lines.map((l) => `${l.name}: ${l.text}\n`).join('');
}

function label(name: string): string {
  return `${name}:`.padEnd(19, ' ');
}

export function formatInfo(info: VolumeInfo): string {
  const tables =
    info.tablesPresent.live || info.tablesPresent.inactive
      ? [info.tablesPresent.live ? 'LIVE' : '', info.tablesPresent.live && info.tablesPresent.inactive ? ' & ' : '', info.tablesPresent.inactive ? 'INACTIVE' : ''].join('')
      : 'None';
  const out = [
    `${label('Name')}${info.name}`,
    `${label('State')}${info.state}`,
    `${label('Tables present')}${tables}`,
  ];
  if (info.openCount !== null) out.push(`${label('Open count')}${info.openCount}`);
  out.push(`${label('Event number')}${info.eventNr}`);
  out.push(`${label('Number of targets')}${info.targetCount}`);
  if (info.uuid !== null) out.push(`UUID: ${info.uuid}`);
  out.push(`${label('Target')}${info.target}`);
  out.push(`${label('Size')}${info.lengthSectors} sectors (${info.sizeBytes} bytes)`);
  out.push(`${label('Held writes')}${info.heldWrites}`);
  out.push(`${label('Queued requests')}${info.queuedRequests}`);
  out.push(`${label('Legs')}${formatLegs(info.legs)}`);
  return `${out.join('\n')}\n\n`;
}

export function formatLegs(legs: readonly LegState[]): string {
  return legs.map((l) => `${l.device}=${l.health}`).join(' ');
}
