// harness.ts — test-side control of a namespaced corosync cluster (scripts/cluster/cluster.sh) and of
// member processes (test/cluster/fixtures/*.ts) running inside the nodes' namespaces.
//
// Owns: one cluster per Harness (unique prefix, run dir under os.tmpdir()), the processes it spawned
// (killed by PID in teardown), and a per-run transpiled copy of src/cluster + fixtures (Node 20 cannot
// run .ts; TypeScript's transpileModule writes plain ESM .js, no type checking, in milliseconds).
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import ts from 'typescript';

const execFileP = promisify(execFile);
export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const CLUSTER_SH = path.join(ROOT, 'scripts/cluster/cluster.sh');
export const ADDON = path.join(ROOT, 'native/build/Release/nbdm_cpg.node');

export const now = () => performance.timeOrigin + performance.now();

/** Why the cluster tests cannot run here, or undefined when they can. */
export async function clusterUnavailableReason(): Promise<string | undefined> {
  if (process.getuid?.() !== 0) return 'needs root (ip netns)';
  for (const tool of ['/usr/sbin/corosync', '/usr/sbin/corosync-quorumtool']) {
    if (!existsSync(tool)) return `${tool} missing (apt-get install corosync)`;
  }
  if (!existsSync('/usr/include/corosync/cpg.h')) return 'libcpg-dev missing';
  if (!existsSync(ADDON)) {
    try {
      await execFileP('bash', [path.join(ROOT, 'scripts/build-native.sh')], { cwd: ROOT });
    } catch (e) {
      return `building the addon failed: ${(e as Error).message}`;
    }
    if (!existsSync(ADDON)) return 'addon not built';
  }
  return undefined;
}

/**
 * Transpiles test/cluster/fixtures/*.ts and every repository module they reach through relative imports
 * into dir, keeping the layout (so relative imports still resolve).
 */
function transpileTree(dir: string): void {
  writeFileSync(path.join(dir, 'package.json'), '{"type":"module"}\n');
  const fixtures = path.join(ROOT, 'test/cluster/fixtures');
  const todo = readdirSync(fixtures)
    .filter((f) => f.endsWith('.ts'))
    .map((f) => path.join(fixtures, f));
  const done = new Set<string>();
  while (todo.length > 0) {
    const file = todo.pop()!;
    if (done.has(file)) continue;
    done.add(file);
    const src = readFileSync(file, 'utf8');
    for (const m of src.matchAll(/(?:from|import)\s*\(?\s*'(\.{1,2}\/[^']+)\.js'/g)) {
      const dep = path.resolve(path.dirname(file), `${m[1]}.ts`);
      if (existsSync(dep)) todo.push(dep);
    }
    const out = ts.transpileModule(src, {
      compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022 },
      fileName: path.basename(file),
    });
    const target = path.join(dir, path.relative(ROOT, file)).replace(/\.ts$/, '.js');
    mkdirSync(path.dirname(target), { recursive: true });
    writeFileSync(target, out.outputText);
  }
}

export interface MemberEvent {
  ev: string;
  at: number;
  [k: string]: unknown;
}

export class Member {
  readonly events: MemberEvent[] = [];
  private waiters: Array<() => void> = [];
  exited = false;
  stderr = '';

  constructor(
    readonly node: number,
    readonly child: ChildProcess,
  ) {
    const rl = createInterface({ input: child.stdout! });
    rl.on('line', (line) => {
      try {
        this.events.push(JSON.parse(line) as MemberEvent);
      } catch {
        this.events.push({ ev: 'garbage', at: now(), line });
      }
      this.wake();
    });
    child.stderr!.on('data', (b: Buffer) => {
      this.stderr = (this.stderr + b.toString()).slice(-8192);
    });
    child.on('exit', () => {
      this.exited = true;
      this.wake();
    });
  }

  get pid(): number {
    return this.child.pid!;
  }

  private wake(): void {
    for (const w of this.waiters.splice(0)) w();
  }

  send(cmd: Record<string, unknown>): void {
    this.child.stdin!.write(JSON.stringify(cmd) + '\n');
  }

  /** Resolves with the first event (at index >= from) matching pred; rejects after timeoutMs. */
  async waitFor(pred: (e: MemberEvent) => boolean, timeoutMs: number, from = 0, what = 'event'): Promise<MemberEvent> {
    let i = from;
    let hit: MemberEvent | undefined;
    await this.waitUntil(
      () => {
        for (; i < this.events.length && hit === undefined; i++) if (pred(this.events[i]!)) hit = this.events[i]!;
        return hit !== undefined;
      },
      timeoutMs,
      what,
    );
    return hit!;
  }

  /** Resolves when cond() holds (evaluated once per new event); rejects after timeoutMs. */
  async waitUntil(cond: () => boolean, timeoutMs: number, what: string): Promise<void> {
    const deadline = now() + timeoutMs;
    for (;;) {
      if (cond()) return;
      if (this.exited) throw new Error(`member on node ${this.node} exited while waiting for ${what}; stderr: ${this.stderr}`);
      const left = deadline - now();
      if (left <= 0) throw new Error(`timeout waiting for ${what} on node ${this.node} member ${this.pid}`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  /** Number of events named ev at index >= from (incremental: cheap to call on every event). */
  count(ev: string, from: number): number {
    let c = this.counted.get(`${ev}@${from}`) ?? { upTo: from, n: 0 };
    for (let i = c.upTo; i < this.events.length; i++) if (this.events[i]!.ev === ev) c.n++;
    c = { upTo: this.events.length, n: c.n };
    this.counted.set(`${ev}@${from}`, c);
    return c.n;
  }
  private readonly counted = new Map<string, { upTo: number; n: number }>();

  deliveries(): string[] {
    return this.events.filter((e) => e.ev === 'deliver').map((e) => e.text as string);
  }

  kill9(): void {
    if (!this.exited && this.child.pid) process.kill(this.child.pid, 'SIGKILL');
  }
}

export class Harness {
  readonly prefix: string;
  readonly runDir: string;
  readonly jsDir: string;
  readonly members: Member[] = [];
  private up = false;

  constructor(tag: string) {
    this.prefix = `nbdm${tag}${process.pid % 100000}`;
    this.runDir = mkdtempSync(path.join(os.tmpdir(), 'nbdm-cluster-'));
    this.jsDir = path.join(this.runDir, 'js');
    mkdirSync(this.jsDir);
    transpileTree(this.jsDir);
    // The transpiled modules import packages (buffer-layout via the disk log): resolve them from ours.
    symlinkSync(path.join(ROOT, 'node_modules'), path.join(this.runDir, 'node_modules'), 'dir');
  }

  private env(): NodeJS.ProcessEnv {
    return {
      ...process.env,
      NBDM_CLUSTER_PREFIX: this.prefix,
      NBDM_CLUSTER_DIR: path.join(this.runDir, 'cluster'),
      NBD_MIRROR_CPG_ADDON: ADDON,
    };
  }

  async sh(...args: string[]): Promise<string> {
    const { stdout } = await execFileP('bash', [CLUSTER_SH, ...args], { env: this.env(), timeout: 120_000 });
    return stdout;
  }

  async start(nodes: number, tokenMs: number): Promise<number> {
    const t0 = now();
    this.up = true;
    await this.sh('up', String(nodes), '--token', String(tokenMs));
    return now() - t0;
  }

  /** Spawns fixture `name` (test/cluster/fixtures/<name>.ts) inside node's namespace. */
  spawnMember(node: number, fixture: string, args: string[]): Member {
    const script = path.join(this.jsDir, 'test/cluster/fixtures', `${fixture}.js`);
    // `ip netns exec` execs node, so the child's PID is the member's PID.
    const child = spawn('ip', ['netns', 'exec', `${this.prefix}-n${node}`, process.execPath, script, ...args], {
      env: this.env(),
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    const m = new Member(node, child);
    this.members.push(m);
    return m;
  }

  /** Kills our members by PID, brings the cluster down, removes the run dir. Never throws. */
  async teardown(): Promise<void> {
    for (const m of this.members) {
      try {
        m.kill9();
      } catch {
        /* already gone */
      }
    }
    if (this.up) {
      try {
        await this.sh('down');
      } catch (e) {
        console.error(`cluster down failed: ${(e as Error).message}`);
      }
    }
    rmSync(this.runDir, { recursive: true, force: true });
  }
}
