#!/usr/bin/env bash
# build-native.sh — build the N-API addons in native/:
#   native/peercred  SO_PEERCRED peer uid for --allow EXPORT=uid:N (needs only Node's headers)
#   native/copy-range copy_file_range(2) for resync between file legs (src/mirror/legs/copy-range.ts; Node's headers only)
#   native/fast-io   read/write system calls without fs's wrapper, for the I/O hot path (src/nbd/server/fast-io.ts; Node's headers only)
#   native/splice    splice(2) leg file -> pipe -> socket for large READ replies (src/nbd/server/splice.ts; Node's headers only)
#   native           the corosync CPG + quorum addon (nbdm_cpg.node) for clustered logs (src/cluster/cpg.ts)
# An addon whose build prerequisites are missing is skipped with one note (exit 0): single-node volumes need
# neither. Set NBDM_NATIVE_REQUIRED=1 to make a missing prerequisite an error instead (CI).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
inc="${NBDM_COROSYNC_INCLUDE:-/usr/include/corosync}"

skip() {
  if [[ "${NBDM_NATIVE_REQUIRED:-}" == 1 ]]; then echo "build-native: $1" >&2; exit 1; fi
  echo "build-native: $1"
}

gyp="$here/node_modules/.bin/node-gyp"
[[ -x "$gyp" ]] || gyp="$(command -v node-gyp || true)"
if [[ -z "$gyp" ]]; then
  skip "node-gyp not found (a devDependency: run npm install); skipping the native addons, single-node volumes still work"
  exit 0
fi
common=(rebuild --loglevel=warn)
# Build against Node's own installed headers (npm is configured with nodedir=/usr here) so nothing is
# downloaded; honour an explicit npm_config_nodedir.
if [[ -z "${npm_config_nodedir:-}" && -f /usr/include/node/node_api.h ]]; then
  common+=(--nodedir=/usr)
fi

"$gyp" "${common[@]}" --directory="$here/native/peercred"

if [[ ! -f "$inc/cpg.h" || ! -f "$inc/quorum.h" ]]; then
  skip "corosync headers not found (apt-get install libcpg-dev libquorum-dev); skipping the cluster addon, single-node volumes still work"
else
  "$gyp" "${common[@]}" --directory="$here/native"
fi
"$gyp" "${common[@]}" --directory="$here/native/copy-range"
"$gyp" "${common[@]}" --directory="$here/native/fast-io"
"$gyp" "${common[@]}" --directory="$here/native/splice"
