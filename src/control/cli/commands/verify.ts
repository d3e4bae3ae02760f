// `nbd-mirror verify NAME [--repair] [--json]`: md's check / repair for a mirror volume, online. The
// server compares the legs region by region while the volume serves I/O (POST /v1/volumes/NAME/verify,
// see src/control/verify.ts); this command follows the verify-progress events on the event stream (a
// progress bar on a terminal, plain lines otherwise, on stderr) and prints a summary on stdout.
// Exit: 0 clean (or every mismatch repaired), 1 mismatches remain / cancelled / refused (e.g. a verify
// already runs), 2 bad input (unknown volume, a linear volume: nothing to verify).
import type { Command } from 'commander';
import type { WebSocket } from 'ws';
import { Progress } from '../../progress.js';
import type { VolumeVerifyResult } from '../../verify.js';
import { EXIT_FAILURE } from '../../usage-error.js';
import { addControlOptions, requireName, runControl, volumePath, type ControlFlags } from '../control-command.js';

export function registerVerify(program: Command): void {
  addControlOptions(
    program
      .command('verify')
      .argument('<name>', 'volume name')
      .option('--repair', 'copy the source leg over legs that differ (md repair)', false)
      .description('compare the legs of a mirror online, region by region (md check / repair)'),
  ).action(async (name: string, flags: ControlFlags & { repair: boolean }) => {
    await runControl(flags, async (c) => {
      const vol = requireName(name, 'verify');
      let progress: Progress | undefined;
      let ws: WebSocket | undefined;
      if (!flags.json) {
        ws = await c
          .events(vol, (ev) => {
            if (ev.kind !== 'verify-progress') return;
            const d = ev.data as { bytesDone: number; totalBytes: number };
            progress ??= new Progress({ label: `${vol}: ${flags.repair ? 'verify --repair' : 'verify'}`, totalBytes: d.totalBytes });
            progress.update(d.bytesDone);
          })
          .catch(() => undefined); // no progress display, the verify still runs
      }
      let r: VolumeVerifyResult;
      try {
        r = await c.post<VolumeVerifyResult>(volumePath(vol, 'verify'), { repair: flags.repair });
      } finally {
        progress?.stop();
        ws?.terminate();
      }
      const remaining = r.mismatchedRegions.length - r.repaired;
      if (remaining > 0 || r.cancelled !== null) process.exitCode = EXIT_FAILURE;
      return [r, summary(r)];
    });
  });
}

function summary(r: VolumeVerifyResult): string {
  const lines = [
    `${r.name}: ${r.cancelled !== null ? `verify cancelled (${r.cancelled})` : 'verify done'}: ${r.regionsChecked} of ${r.regionCount} regions checked` +
      `${r.regionsSkipped > 0 ? `, ${r.regionsSkipped} skipped (not in sync)` : ''} in ${r.seconds.toFixed(1)} s`,
    r.mismatchedRegions.length === 0
      ? `${r.name}: no mismatches`
      : `${r.name}: ${r.mismatchedRegions.length} mismatched regions: ${r.mismatchRanges}`,
  ];
  if (r.repair) lines.push(`${r.name}: ${r.repaired} regions repaired`);
  return `${lines.join('\n')}\n`;
}
