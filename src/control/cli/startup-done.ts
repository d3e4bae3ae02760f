// Tells the launcher (bin/nbd-mirror.js) that a long-running command finished starting, so that it may
// store the V8 code cache of the bundled CLI now that the start-up path has been compiled (it does so
// only when the cache is missing or was rejected). A no-op when the CLI runs without the launcher's
// bundle (tsc's per-module output, tests importing modules).
/** The hook bin/nbd-mirror.js installs on globalThis while it runs the bundle. */
export const STARTUP_DONE_HOOK = '__nbdMirrorStartupDone';

export function startupDone(): void {
  const hook = (globalThis as Record<string, unknown>)[STARTUP_DONE_HOOK];
  if (typeof hook === 'function') (hook as () => void)();
}
