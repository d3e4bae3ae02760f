// `serve --pool NAME [--devices DEV...]`: serve every volume of a pool (src/pool). Adds the options to the
// serve command and, before its action, turns the pool into --table/--name pairs (and, for a clustered
// pool, follows its metadata changes). The pool modules are loaded only when --pool is given: a plain
// `serve` must not pay for them (nor for the corosync binding the cluster lock loads) at start-up.
import { resolve } from 'node:path';
import type { Command } from 'commander';
import type { LogLevel } from '../../logging.js';
import { UsageError } from '../../usage-error.js';

export function registerServePool(program: Command): void {
  const serve = program.commands.find((c) => c.name() === 'serve');
  if (serve === undefined) throw new Error('registerServePool: register the serve command first');
  // The same --devices option as pool/cli.ts addDevicesOption (not imported: it loads the cluster lock).
  serve
    .option('--pool <name>', 'serve every volume of this pool (found through --devices or NBD_MIRROR_DEVICES)')
    .option('--devices <dev...>', 'devices or directories holding the pool (default: env NBD_MIRROR_DEVICES)');
  serve.hook('preAction', async (cmd) => {
    const o = cmd.opts<{ pool?: string; devices?: string[]; table: string[]; name: string[]; control?: string; logLevel?: LogLevel }>();
    if (o.pool === undefined) {
      if (o.devices !== undefined) throw new UsageError('--devices is only used with --pool');
      return;
    }
    if (o.name.length !== o.table.length) throw new UsageError('with --pool, give every extra --table its --name');
    const { poolServePlan } = await import('../../../pool/service.js');
    let plan: Awaited<ReturnType<typeof poolServePlan>>;
    const flags = o.devices !== undefined ? { devices: o.devices } : {};
    try {
      plan = await poolServePlan(o.pool, flags);
    } catch (e) {
      throw new UsageError(`--pool ${o.pool}: ${(e as Error).message}`);
    }
    cmd.setOptionValue('table', [...o.table, ...plan.tables.map((t) => t.table)]);
    cmd.setOptionValue('name', [...o.name, ...plan.tables.map((t) => t.name)]);
    const { LOCK_MODE_ENV } = await import('../../../pool/cluster-lock.js');
    if (plan.md.clustered && process.env[LOCK_MODE_ENV] !== 'local') {
      // Every node sees the changes: follow the pool's COMMITTED announcements (src/pool/watch.ts).
      const [{ startPoolWatcher }, { createLogger }, { defaultControlPath }] = await Promise.all([
        import('../../../pool/watch.js'),
        import('../../logging.js'),
        import('../../client.js'),
      ]);
      const log = createLogger(o.logLevel ?? 'info');
      const controlPath = resolve(o.control ?? defaultControlPath());
      try {
        await startPoolWatcher({ poolName: o.pool, poolUuid: plan.md.uuid, seqno: plan.md.seqno, flags, controlPath, log });
      } catch (e) {
        throw new UsageError(
          `--pool ${o.pool} is clustered: cannot join its corosync group to follow metadata changes: ${(e as Error).message} ` +
            `(set ${LOCK_MODE_ENV}=local if no other node uses the pool)`,
        );
      }
    }
  });
}
