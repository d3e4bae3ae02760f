// `nbd-mirror events [NAME] [--count N]`: follow the control socket's event stream, one JSON object per
// line (leg failures, held writes, suspend/reload/resume, repair, resync progress, in-sync). The first
// line is the server's hello (volumes and their event numbers).
import type { Command } from 'commander';
import type { WebSocket } from 'ws';
import { ControlClient, resolveControlTarget } from '../../client.js';
import { UsageError } from '../../usage-error.js';
import { addControlOptions, type ControlFlags } from '../control-command.js';

export function registerEvents(program: Command): void {
  addControlOptions(
    program
      .command('events')
      .argument('[name]', 'only this volume')
      .option('--count <n>', 'exit after this many events (the hello not counted)')
      .description('print volume events as JSON lines until interrupted'),
  ).action(async (name: string | undefined, flags: ControlFlags & { count?: string }) => {
    let left = Infinity;
    if (flags.count !== undefined) {
      if (!/^[0-9]+$/.test(flags.count)) throw new UsageError(`events: --count must be a number, not "${flags.count}"`);
      left = Number(flags.count);
    }
    const client = new ControlClient(resolveControlTarget(flags));
    let ws: WebSocket | undefined;
    let finish: () => void = () => undefined;
    const finished = new Promise<void>((r) => (finish = r));
    ws = await client.events(name, (ev) => {
      process.stdout.write(`${JSON.stringify(ev)}\n`);
      if (ev.kind !== 'hello' && --left <= 0) finish();
    });
    if (left <= 0) finish();
    ws.on('close', () => finish());
    process.once('SIGINT', () => finish());
    process.once('SIGTERM', () => finish());
    await finished;
    ws.close();
  });
}
