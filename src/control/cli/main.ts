// Entry point of the `nbd-mirror` command. Each subcommand lives in its own file under commands/.
import { Command } from 'commander';

const program = new Command('nbd-mirror').description('A userspace block-device mirror served over NBD');
await program.parseAsync(process.argv);
