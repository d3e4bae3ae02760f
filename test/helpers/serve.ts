// Stand-alone server for manual checks and the fio comparison:
//   node serve.js --socket PATH (--memory BYTES | --file PATH) [--name NAME]
// Prints "ready" once listening; exits on SIGTERM/SIGINT after close().

import { NbdServer } from '../../src/nbd/server/server.js';
import type { Export } from '../../src/nbd/export.js';
import { FileExport } from './file-export.js';
import { MemoryExport } from './memory-export.js';

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const get = (k: string): string | undefined => {
    const i = args.indexOf(k);
    return i >= 0 ? args[i + 1] : undefined;
  };
  const socket = get('--socket');
  if (socket === undefined) throw new Error('--socket PATH required');
  const name = get('--name') ?? '';
  let exp: Export;
  const file = get('--file');
  if (file !== undefined) exp = await FileExport.open(file);
  else exp = new MemoryExport({ sizeBytes: Number(get('--memory') ?? 64 * 1024 * 1024) });
  const server = new NbdServer({ exports: new Map([[name, { export: exp }]]), defaultExportName: name });
  await server.listen({ kind: 'unix', path: socket });
  process.stdout.write('ready\n');
  const stop = (): void => {
    void server.close().then(() => exp.close()).then(() => process.exit(0));
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main().catch((err: unknown) => {
  process.stderr.write(`${err instanceof Error ? err.stack : String(err)}\n`);
  process.exit(1);
});
