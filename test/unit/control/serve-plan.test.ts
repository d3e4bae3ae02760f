import { describe, expect, it } from 'vitest';
import { buildServePlan, parseTableFile } from '../../../src/control/serve-plan.js';

const T1 = '0 2048 linear /tmp/a 0';
const T2 = '0 4096 linear /tmp/b 0';

describe('buildServePlan', () => {
  it('serves one unnamed table as "volume", default = it', () => {
    const plan = buildServePlan({ tables: [T1], names: [], tableFiles: [] });
    expect(plan.exports).toEqual([{ name: 'volume', tableLine: T1, source: '--table #1' }]);
    expect(plan.defaultExportName).toBe('volume');
  });
  it('pairs --table and --name in order; the first is the default', () => {
    const plan = buildServePlan({ tables: [T1, T2], names: ['a', 'b'], tableFiles: [] });
    expect(plan.exports.map((e) => [e.name, e.tableLine])).toEqual([['a', T1], ['b', T2]]);
    expect(plan.defaultExportName).toBe('a');
  });
  it('rejects unpaired names and tables', () => {
    expect(() => buildServePlan({ tables: [T1, T2], names: ['a'], tableFiles: [] })).toThrow('got 2 --table and 1 --name');
    expect(() => buildServePlan({ tables: [T1, T2], names: [], tableFiles: [] })).toThrow('without --name');
    expect(() => buildServePlan({ tables: [], names: [], tableFiles: [] })).toThrow('nothing to serve');
  });
  it('rejects duplicate names, naming both sources', () => {
    expect(() =>
      buildServePlan({ tables: [T1], names: ['x'], tableFiles: [{ path: 'f.conf', text: `# c\n\nx: ${T2}\n` }] }),
    ).toThrow('duplicate export name "x" (--table #1 and f.conf:3)');
  });
  it('names bare table-file lines volume<N> unless there is only one table', () => {
    const plan = buildServePlan({ tables: [], names: [], tableFiles: [{ path: 'f', text: `${T1}\nb: ${T2}\n` }] });
    expect(plan.exports.map((e) => e.name)).toEqual(['volume0', 'b']);
    const single = buildServePlan({ tables: [], names: [], tableFiles: [{ path: 'f', text: `  ${T1}  \n` }] });
    expect(single.exports.map((e) => [e.name, e.tableLine])).toEqual([['volume', T1]]);
  });
  it('rejects empty files, empty names and empty tables', () => {
    expect(() => buildServePlan({ tables: [], names: [], tableFiles: [{ path: 'f', text: '# only\n' }] })).toThrow('no tables');
    expect(() => parseTableFile(': 0 1 linear a 0', 'f')).toThrow('f:1: empty export name');
    expect(() => parseTableFile('x:', 'f')).toThrow('f:1: export "x" has no table');
    expect(() => buildServePlan({ tables: [' '], names: [], tableFiles: [] })).toThrow('--table #1: empty table');
    expect(() => buildServePlan({ tables: [T1], names: ['a\tb'], tableFiles: [] })).toThrow('control character');
  });
});
