#!/bin/bash
# Compare our NBD server with nbdkit under fio's nbd engine (libnbd client), same file, same jobs.
#   bash test/nbd/bench/fio-compare.sh [RUNTIME_S] [JOB...]
# Jobs: randread1 (4k QD1), randwrite1 (4k QD1), randwrite32 (4k QD32), seqread8 (1M QD8),
# seqwrite8 (1M QD8). Prints IOPS, MiB/s and the server's CPU time per I/O (user+sys from
# /proc, so it is comparable even on a busy machine where IOPS are not). "ours" is the file export
# with async fs calls (a libuv thread-pool hop each); "ours-sync" does I/O up to 64 KiB with
# readSync/writeSync on the event loop (page-cache experiment). Builds src/nbd and
# test/helpers into a temp dir first; cleans up everything it created.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
RUNTIME=${1:-8}; shift || true
JOBS=${*:-randread1 randwrite1 randwrite32 seqread8 seqwrite8}
WORK=$(mktemp -d /tmp/nbd-fio-XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

cat > "$WORK/tsconfig.json" <<JSON
{ "extends": "$ROOT/tsconfig.json",
  "compilerOptions": { "outDir": "$WORK/build", "rootDir": "$ROOT", "sourceMap": false, "typeRoots": ["$ROOT/node_modules/@types"] },
  "include": ["$ROOT/src/nbd/**/*.ts", "$ROOT/test/helpers/memory-export.ts", "$ROOT/test/helpers/file-export.ts", "$ROOT/test/helpers/serve.ts"] }
JSON
(cd "$ROOT" && npx tsc -p "$WORK/tsconfig.json")
truncate -s 1G "$WORK/img"
dd if=/dev/urandom of="$WORK/img" bs=1M count=1024 conv=notrunc status=none

job() { # name rw bs depth
  cat > "$WORK/$1.fio" <<FIO
[global]
ioengine=nbd
uri=nbd+unix:///?socket=\${SOCK}
rw=$2
bs=$3
iodepth=$4
time_based=1
runtime=$RUNTIME
size=1G
[job]
FIO
}
job randread1 randread 4k 1; job randwrite1 randwrite 4k 1; job randwrite32 randwrite 4k 32
job seqread8 read 1M 8; job seqwrite8 write 1M 8

run() { # server job
  local sock="$WORK/$1.sock" pid
  rm -f "$sock"
  if [ "$1" = ours ]; then node "$WORK/build/test/helpers/serve.js" --socket "$sock" --file "$WORK/img" >/dev/null & pid=$!
  elif [ "$1" = ours-sync ]; then FILE_EXPORT_SYNC_BYTES_MAX=65536 node "$WORK/build/test/helpers/serve.js" --socket "$sock" --file "$WORK/img" >/dev/null & pid=$!
  else nbdkit -f -U "$sock" file "$WORK/img" & pid=$!; fi
  PIDS+=("$pid")
  for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done
  local c0 c1 out
  c0=$(awk '{print $14+$15}' /proc/$pid/stat)
  out=$(SOCK=$sock fio --output-format=terse --terse-version=3 "$WORK/$2.fio" | tail -1)
  c1=$(awk '{print $14+$15}' /proc/$pid/stat)
  kill "$pid"; wait "$pid" 2>/dev/null || true
  echo "$out" | awk -F';' -v c=$((c1 - c0)) -v hz="$(getconf CLK_TCK)" -v s="$1" -v j="$2" \
    '{ios=$8*$9/1000+$49*$50/1000; printf "%-12s %-7s iops=%-8d MiB/s=%-7.0f cpu_us_per_io=%.1f\n", j, s, $8+$49, ($7+$48)/1024, (ios>0 ? c*1e6/hz/ios : 0)}'
}
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
for j in $JOBS; do run nbdkit "$j"; run ours "$j"; run ours-sync "$j"; done
