// Entry point of the `nbd-mirror` command. Each subcommand lives in its own file under commands/; this
// file knows only their names and loads a command's module when that command runs, so `serve` does not
// pay for the pool, the control client's WebSocket or the progress bars at start-up (every module
// imported here is parsed and evaluated before anything else happens: start-up time is resync time).
// Help (no command, --help, `help`, an unknown command) loads every command, to list them.
// bin/nbd-mirror.js runs this from one bundled file when the build made one (scripts/build-cli.js).
// Exit codes: 0 ok, 1 runtime failure, 2 bad input (usage, table, address, files): commander's own usage
// errors are mapped to 2 as well.
import { Command, CommanderError } from 'commander';
import { EXIT_FAILURE, EXIT_USAGE, UsageError } from '../usage-error.js';
import { cliVersion } from './version.js';

type Register = (program: Command) => void;

/**
 * Command name -> its registration, loaded on demand. In help order. `serve` also gets the pool's
 * `--pool` option (serve-pool.ts); create/list/remove/resize/convert are the pool's volume commands.
 */
const COMMANDS: Record<string, () => Promise<Register[]>> = {
  serve: async () => {
    const [s, p] = await Promise.all([import('./commands/serve.js'), import('./commands/serve-pool.js')]);
    return [s.registerServe, p.registerServePool];
  },
  ls: async () => [(await import('./commands/ls.js')).registerLs],
  status: async () => [(await import('./commands/status.js')).registerStatus],
  table: async () => [(await import('./commands/table.js')).registerTable],
  info: async () => [(await import('./commands/info.js')).registerInfo],
  suspend: async () => [(await import('./commands/suspend.js')).registerSuspend],
  resume: async () => [(await import('./commands/resume.js')).registerResume],
  reload: async () => [(await import('./commands/reload.js')).registerReload],
  clear: async () => [(await import('./commands/clear.js')).registerClear],
  wait: async () => [(await import('./commands/wait.js')).registerWait],
  message: async () => [(await import('./commands/message.js')).registerMessage],
  repair: async () => [(await import('./commands/repair.js')).registerRepair],
  events: async () => [(await import('./commands/events.js')).registerEvents],
  verify: async () => [(await import('./commands/verify.js')).registerVerify],
  pool: async () => [(await import('./commands/pool.js')).registerPool],
  create: async () => [(await import('./commands/create.js')).registerCreate],
  list: async () => [(await import('./commands/list.js')).registerList],
  remove: async () => [(await import('./commands/remove.js')).registerRemove],
  resize: async () => [(await import('./commands/resize.js')).registerResize],
  convert: async () => [(await import('./commands/convert.js')).registerConvert],
  resync: async () => [(await import('./commands/resync.js')).registerResync],
};

/** The command the arguments name, if it is one of ours (the program has no options of its own before it). */
function commandOf(args: readonly string[]): string | undefined {
  const first = args[0];
  return first !== undefined && Object.hasOwn(COMMANDS, first) ? first : undefined;
}

const program = new Command('nbd-mirror')
  .description('A userspace block-device mirror (dm-mirror, LVM cmirror) served over NBD')
  .version(cliVersion(), '-V, --version', 'print the version and exit')
  .exitOverride()
  .showHelpAfterError('(run with --help for usage)');

/** Runs the command line. Not top-level await: the bundle (scripts/build-cli.js) is a CommonJS file. */
async function main(): Promise<void> {
  try {
    const args = process.argv.slice(2);
    const wanted = commandOf(args);
    // --version alone needs no command; anything else that names none (help, a typo) lists them all.
    const isVersion = wanted === undefined && args.length === 1 && (args[0] === '--version' || args[0] === '-V');
    const names = isVersion ? [] : wanted !== undefined ? [wanted] : Object.keys(COMMANDS);
    const registers = await Promise.all(names.map((n) => COMMANDS[n]!()));
    for (const r of registers.flat()) r(program);
    for (const sub of program.commands) sub.exitOverride();
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
}

void main();
