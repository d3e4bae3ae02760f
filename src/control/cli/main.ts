// Entry point of the `nbd-mirror` command. Each subcommand lives in its own file under commands/ and is
// registered here. Exit codes: 0 ok, 1 runtime failure, 2 bad input (usage, table, address, files):
// commander's own usage errors are mapped to 2 as well.
import { Command, CommanderError } from 'commander';
import { registerServe } from './commands/serve.js';
import { registerLs } from './commands/ls.js';
import { registerStatus } from './commands/status.js';
import { registerTable } from './commands/table.js';
import { registerInfo } from './commands/info.js';
import { registerSuspend } from './commands/suspend.js';
import { registerResume } from './commands/resume.js';
import { registerReload } from './commands/reload.js';
import { registerClear } from './commands/clear.js';
import { registerWait } from './commands/wait.js';
import { registerMessage } from './commands/message.js';
import { registerRepair } from './commands/repair.js';
import { registerEvents } from './commands/events.js';
import { registerVerify } from './commands/verify.js';
import { registerPool, registerServePool } from './commands/pool.js';
import { registerCreate } from './commands/create.js';
import { registerList } from './commands/list.js';
import { registerRemove } from './commands/remove.js';
import { registerResize } from './commands/resize.js';
import { registerConvert } from './commands/convert.js';
import { EXIT_FAILURE, EXIT_USAGE, UsageError } from '../usage-error.js';

const program = new Command('nbd-mirror')
  .description('A userspace block-device mirror (dm-mirror, LVM cmirror) served over NBD')
  .exitOverride()
  .showHelpAfterError('(run with --help for usage)');
registerServe(program);
registerLs(program);
registerStatus(program);
registerTable(program);
registerInfo(program);
registerSuspend(program);
registerResume(program);
registerReload(program);
registerClear(program);
registerWait(program);
registerMessage(program);
registerRepair(program);
registerEvents(program);
registerVerify(program);
// Pools (src/pool): pool *, create, list, remove, resize, convert; serve --pool P.
registerServePool(program);
registerPool(program);
registerCreate(program);
registerList(program);
registerRemove(program);
registerResize(program);
registerConvert(program);
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
