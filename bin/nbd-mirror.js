#!/usr/bin/env node
// The nbd-mirror command. Runs the CLI from one bundled file, dist/bundle/nbd-mirror.cjs (scripts/build-cli.js,
// part of `npm run build`), compiled through vm.Script with a V8 code cache: start-up time is resync time,
// and one cached file starts ~0.1 s sooner than ~130 modules resolved, read and compiled one by one.
// Falls back to tsc's per-module output (dist/control/cli/main.js) when there is no bundle, when that
// output is newer than the bundle (tsc run alone after a build), or with NBD_MIRROR_BUNDLE=0.
//
// Code cache: <bundle>.<build id>.v8cache, the build id being a hash of the bundle (its first line), so a
// cache never meets another build's code; V8 rejects one made by another node version or with other V8
// flags. Stored (when missing or rejected) once a command reports its start-up done (serve: serving), by
// write + rename, best effort (a read-only install runs uncached). The build stores one by a training run.
// Stack traces: positions in the bundle are mapped to the .ts sources through the bundle's source map,
// read only when a stack is formatted.
// This file is CommonJS (bin/package.json): an ES module entry costs node ~8 ms more to start.
'use strict';
const { readFileSync, renameSync, rmSync, statSync, writeFileSync } = require('node:fs');
const { createRequire, SourceMap } = require('node:module');
const { dirname, join, resolve } = require('node:path');
const { Script } = require('node:vm');

const DIST = join(__dirname, '..', 'dist');
const BUNDLE = join(DIST, 'bundle', 'nbd-mirror.cjs');
/** The bundle's first line, written by scripts/build-cli.js: `// nbd-mirror bundle <id>`. */
const BUILD_ID = /^\/\/ nbd-mirror bundle ([0-9a-f]{16})\n/;
/** What src/control/cli/startup-done.ts calls. */
const STARTUP_DONE_HOOK = '__nbdMirrorStartupDone';

const mtimeMs = (path) => statSync(path, { throwIfNoEntry: false })?.mtimeMs ?? -1;

const bundleMs = process.env.NBD_MIRROR_BUNDLE === '0' ? -1 : mtimeMs(BUNDLE);
if (bundleMs < 0 || mtimeMs(join(DIST, 'control', 'cli', 'main.js')) > bundleMs) {
  import('../dist/control/cli/main.js').catch((err) => {
    process.stderr.write(`nbd-mirror: fatal: ${err?.stack ?? String(err)}\n`);
    process.exit(1);
  });
} else {
  runBundle();
}

function runBundle() {
  const source = readFileSync(BUNDLE, 'utf8');
  const id = BUILD_ID.exec(source)?.[1];
  const cacheFile = id === undefined ? undefined : `${BUNDLE}.${id}.v8cache`;
  let cachedData;
  if (cacheFile !== undefined) {
    try {
      cachedData = readFileSync(cacheFile);
    } catch {
      // not stored yet (or unreadable): compile from source
    }
  }
  // CommonJS wrapper on the first line (the build-id comment), so the bundle's line numbers stay its own.
  const script = new Script(`(function (exports, require, module, __filename, __dirname) {${source}\n})`, {
    filename: BUNDLE,
    cachedData,
  });
  const storeCache = cacheFile !== undefined && (cachedData === undefined || script.cachedDataRejected === true);
  globalThis[STARTUP_DONE_HOOK] = () => {
    delete globalThis[STARTUP_DONE_HOOK];
    if (storeCache) setTimeout(() => writeCodeCache(script, cacheFile), 0).unref();
  };
  Error.prepareStackTrace = mapStack;
  const module = { exports: {} };
  script.runInThisContext().call(module.exports, module.exports, createRequire(BUNDLE), module, BUNDLE, dirname(BUNDLE));
}

function writeCodeCache(script, cacheFile) {
  const tmp = `${cacheFile}.${process.pid}.tmp`;
  try {
    writeFileSync(tmp, script.createCachedData());
    renameSync(tmp, cacheFile);
  } catch {
    rmSync(tmp, { force: true });
  }
}

/** The bundle's source map (null: none or unreadable), loaded on the first stack formatted. */
let sourceMap;

function bundleSourceMap() {
  if (sourceMap === undefined) {
    sourceMap = null;
    try {
      sourceMap = new SourceMap(JSON.parse(readFileSync(`${BUNDLE}.map`, 'utf8')));
    } catch {
      // no map: bundle positions
    }
  }
  return sourceMap;
}

/** Error.prepareStackTrace: V8's format, with bundle positions replaced by the .ts file, line and column. */
function mapStack(error, sites) {
  let head;
  try {
    head = Error.prototype.toString.call(error);
  } catch {
    head = '<error>';
  }
  return head + sites.map((site) => `\n    at ${mapSite(site)}`).join('');
}

function mapSite(site) {
  const text = String(site);
  try {
    if (site.getFileName() !== BUNDLE) return text;
    const line = site.getLineNumber();
    const column = site.getColumnNumber();
    const entry = bundleSourceMap()?.findEntry(line - 1, column - 1);
    if (entry === undefined || entry.originalSource === undefined) return text;
    const file = resolve(dirname(BUNDLE), entry.originalSource.replace(/^file:\/\//, ''));
    return text.replace(`${BUNDLE}:${line}:${column}`, `${file}:${entry.originalLine + 1}:${entry.originalColumn + 1}`);
  } catch {
    return text;
  }
}
