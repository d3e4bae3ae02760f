// Entry point of the `nbd-mirror` command. Each subcommand lives in its own file under commands/ and is
// registered here. Exit codes: 0 ok, 1 runtime failure, 2 bad input (usage, table, address, files):
// commander's own usage errors are mapped to 2 as well.
import { Command, CommanderError } from 'commander';
import { registerServe } from './commands/serve.js';
import { EXIT_FAILURE, EXIT_USAGE, UsageError } from '../usage-error.js';

const program = new Command('nbd-mirror')
  .description('A userspace block-device mirror (dm-mirror, LVM cmirror) served over NBD')
  .exitOverride()
  .showHelpAfterError('(run with --help for usage)');
registerServe(program);
for (const sub of program.commands) sub.exitOverride();

try {
  await program.parseAsync(process.argv);
} catch (err) {
  if (err instanceof CommanderError) {
    // Help and version "errors" carry exit code 0; commander already printed its message.
    process.exit(err.exitCode === 0 ? 0 : EXIT_USAGE);
  }
  if (err instanceof UsageError) {
    process.stderr.write(`nbd-mirror: error: ${err.message}\n`);
    process.exit(EXIT_USAGE);
  }
  process.stderr.write(`nbd-mirror: fatal: ${(err as Error).stack ?? String(err)}\n`);
  process.exit(EXIT_FAILURE);
}
