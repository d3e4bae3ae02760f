#!/usr/bin/env bash
# build-native.sh — build the corosync CPG addon (native/ -> native/build/Release/nbdm_cpg.node).
# Without corosync's development headers it prints one note and exits 0: single-node volumes do not
# need the addon; only clustered logs (src/cluster/cpg.ts) do. Set NBDM_NATIVE_REQUIRED=1 to make a
# missing libcpg-dev an error instead (CI for the cluster tests).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
inc="${NBDM_COROSYNC_INCLUDE:-/usr/include/corosync}"
if [[ ! -f "$inc/cpg.h" || ! -f "$inc/quorum.h" ]]; then
  msg="build-native: corosync headers not found (apt-get install libcpg-dev libquorum-dev); skipping the cluster addon, single-node volumes still work"
  if [[ "${NBDM_NATIVE_REQUIRED:-}" == 1 ]]; then echo "$msg" >&2; exit 1; fi
  echo "$msg"
  exit 0
fi
gyp="$here/node_modules/.bin/node-gyp"
[[ -x "$gyp" ]] || gyp="$(command -v node-gyp || true)"
if [[ -z "$gyp" ]]; then
  msg="build-native: node-gyp not found (a devDependency: run npm install); skipping the cluster addon, single-node volumes still work"
  if [[ "${NBDM_NATIVE_REQUIRED:-}" == 1 ]]; then echo "$msg" >&2; exit 1; fi
  echo "$msg"
  exit 0
fi
args=(rebuild --loglevel=warn --directory="$here/native")
# Build against Node's own installed headers (npm is configured with nodedir=/usr here) so nothing is
# downloaded; honour an explicit npm_config_nodedir.
if [[ -z "${npm_config_nodedir:-}" && -f /usr/include/node/node_api.h ]]; then
  args+=(--nodedir=/usr)
fi
"$gyp" "${args[@]}"
# The optional unix peer-uid addon (SO_PEERCRED for --allow EXPORT=uid:N) needs only Node's headers.
peer_args=(rebuild --loglevel=warn --directory="$here/native/peercred")
[[ " ${args[*]} " == *" --nodedir=/usr "* ]] && peer_args+=(--nodedir=/usr)
"$gyp" "${peer_args[@]}"
