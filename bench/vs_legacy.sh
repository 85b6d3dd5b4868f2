#!/usr/bin/env bash
# bench/vs_legacy.sh [api|migration|all]  (default: all)
#
# brokerlink side by side with the legacy app (Node/Express + SQLite, github
# williamcmwan/investment-track, built unpatched by the anchor scripts), in alternating runs on
# the same machine in the same hour, so the ratio holds even when absolute figures move:
#
#   api        the legacy app's perf data shape (1,000 users x 20 accounts x 5 history rows) in
#              both; wrk 2 threads / 64 connections, tokens of 200 users rotated, list and detail.
#              Same content: the legacy list always carries each account's history, ours is
#              asked for it (`GET /api/accounts?include=history`).
#   migration  one legacy database written by the anchor's gen_legacy.py (100 k users ...);
#              the legacy app's own integration migration vs `bench/migrate_bench.py --source`
#              (first run and rerun), each on a fresh copy.
#
# env:
#   ANCHOR    the anchor scripts (default: ../shared/anchor next to the repository)
#   MIRROR    git dir of the legacy repository (default: cloned from GitHub into $WORK)
#   WORK      scratch (default /tmp/brokerlink-vs-legacy; the legacy build is reused)
#   ROUNDS=2  alternating rounds;  DURATION=30 WARMUP=5 seconds per route;  USERS=100000
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
ANCHOR=${ANCHOR:-$(cd "$REPO/.." && pwd)/shared/anchor}
WORK=${WORK:-/tmp/brokerlink-vs-legacy}
ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-30}
WARMUP=${WARMUP:-5}
USERS=${USERS:-100000}
SECRET=invtrack-anchor-jwt-secret
PORT=${LEGACY_PORT:-3102}
WHAT=${1:-all}
[ -d "$ANCHOR" ] || { echo "anchor scripts not found at $ANCHOR (set ANCHOR)" >&2; exit 2; }
mkdir -p "$WORK/results"
RES=$WORK/results/$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$RES"
# uv as `make` finds it (installed into .tools/ on a machine without it): nothing by hand.
UV=$(cd "$REPO" && ./scripts/bootstrap.sh | tail -n 1)
PY() { (cd "$REPO" && "$UV" run --frozen python "$@"); }

if [ -z "${MIRROR:-}" ]; then
  MIRROR=$WORK/mirror.git
  [ -d "$MIRROR" ] || git clone -q --mirror https://github.com/williamcmwan/investment-track "$MIRROR"
fi
echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')  cores: $(nproc)  rounds: $ROUNDS  migration users: $USERS" | tee "$RES/env.txt"
echo "building the legacy app (idempotent; the first build compiles SQLite, ~3-5 min)"
MIRROR=$MIRROR WORK=$WORK "$ANCHOR/setup.sh" > "$RES/setup.log" 2>&1 \
  || { tail -20 "$RES/setup.log"; exit 1; }
export WORK

# The legacy app recomputes every user's snapshot at :00 and :30; keep clear of those minutes.
clear_of_cron() {
  while :; do
    m=$((10#$(date -u +%M) % 30))
    [ "$m" -ge 1 ] && [ "$m" -le 27 ] && return
    sleep 20
  done
}

cleanup() {
  [ -n "${OURS_PID:-}" ] && kill "$OURS_PID" 2>/dev/null && wait "$OURS_PID" 2>/dev/null
  [ -f "$WORK/perf/perf.db.pid" ] && "$ANCHOR/run_original.sh" stop "$WORK/perf/perf.db" "$PORT" >/dev/null 2>&1
  true
}
trap cleanup EXIT

api() {
  mkdir -p "$WORK/perf"
  "$WORK/venv/bin/python" "$ANCHOR/seed_perf.py" --db "$WORK/perf/perf.db" --jwt-secret "$SECRET" \
    --schema "$WORK/src/server/src/database/schema.sql" --out-dir "$WORK/perf" --force > "$RES/seed_legacy.log"
  "$ANCHOR/run_original.sh" start "$WORK/perf/perf.db" "$PORT" "$SECRET"
  rm -rf "$WORK/ours"
  (cd "$REPO" && exec "$UV" run --frozen python bench/api_bench.py --serve "$WORK/ours") > "$RES/ours_serve.log" 2>&1 &
  OURS_PID=$!
  for _ in $(seq 1 600); do [ -f "$WORK/ours/server.json" ] && break; sleep 1; done
  [ -f "$WORK/ours/server.json" ] || { cat "$RES/ours_serve.log"; exit 1; }
  OURS_BASE=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["base"])' "$WORK/ours/server.json")
  OURS_SERVER=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["pids"][0])' "$WORK/ours/server.json")
  for round in $(seq 1 "$ROUNDS"); do
    clear_of_cron
    PY bench/api_bench.py --target "http://127.0.0.1:$PORT" --label legacy \
      --tokens "$WORK/perf/tokens.txt" --ids "$WORK/perf/ids.txt" --server-pid "$(cat "$WORK/perf/perf.db.pid")" \
      --routes list+history,detail --duration "$DURATION" --warmup "$WARMUP" --json "$RES/api_legacy_$round.json"
    clear_of_cron
    PY bench/api_bench.py --target "$OURS_BASE" --label brokerlink \
      --tokens "$WORK/ours/tokens.txt" --ids "$WORK/ours/ids.txt" --server-pid "$OURS_SERVER" \
      --routes list+history,detail --duration "$DURATION" --warmup "$WARMUP" --json "$RES/api_ours_$round.json"
  done
  kill "$OURS_PID"; wait "$OURS_PID" 2>/dev/null || true; OURS_PID=
  "$ANCHOR/run_original.sh" stop "$WORK/perf/perf.db" "$PORT"
}

migration() {
  local data=$WORK/migration
  mkdir -p "$data"
  if [ ! -f "$data/legacy_$USERS.db" ]; then
    MIRROR=$MIRROR DATA=$data LOCK=$data/lock USERS=$USERS RES=$data "$ANCHOR/migration/run.sh" gen \
      > "$RES/generate.log" 2>&1 || { tail -20 "$RES/generate.log"; exit 1; }
  fi
  for round in $(seq 1 "$ROUNDS"); do
    rm -f "$data/run.db" "$data/run.db-wal" "$data/run.db-shm"
    cp "$data/legacy_$USERS.db" "$data/run.db"
    echo "legacy round $round: $("$ANCHOR/migration/run_once.sh" "$data/run.db" "$RES/legacy_mig_$round")" \
      | tee -a "$RES/migration_legacy.txt"
    rm -f "$data/run.db" "$data/run.db-wal" "$data/run.db-shm"
    cp "$data/legacy_$USERS.db" "$data/run.db"
    PY bench/migrate_bench.py --source "$data/run.db" | tee "$RES/migration_ours_$round.txt"
  done
  rm -f "$data/run.db" "$data/run.db-wal" "$data/run.db-shm"
}

case "$WHAT" in
  api) api ;;
  migration) migration ;;
  all) api; migration ;;
  *) echo "usage: $0 [api|migration|all]" >&2; exit 2 ;;
esac

python3 - "$RES" <<'PY'
import glob, json, re, statistics, sys
res = sys.argv[1]
env = open(f"{res}/env.txt").read().strip()
print(f"\nside by side ({env}); medians of the alternating rounds")
def med(xs):
    return statistics.median(xs) if xs else float("nan")
rows = []
for route, shown, goal in (("list+history", "GET /api/accounts (with history)", 7), ("detail", "GET /api/accounts/{id}", 7)):
    legacy = [json.load(open(f))["routes"][route] for f in sorted(glob.glob(f"{res}/api_legacy_*.json"))]
    ours = [json.load(open(f))["routes"][route] for f in sorted(glob.glob(f"{res}/api_ours_*.json"))]
    if not legacy or not ours:
        continue
    l_rps, o_rps = med([r["req_per_s"] for r in legacy]), med([r["req_per_s"] for r in ours])
    l_cpu = med([r["server_cpu_ms_per_request"] for r in legacy])
    o_cpu = med([r["server_cpu_ms_per_request"] for r in ours])
    rows.append((shown,
                 f"{l_rps:,.0f} req/s, p99 {med([r['p99_ms'] for r in legacy]):.0f} ms, {l_cpu:.2f} ms CPU/req",
                 f"{o_rps:,.0f} req/s, p99 {med([r['p99_ms'] for r in ours]):.0f} ms, {o_cpu:.2f} ms CPU/req",
                 f"{o_rps / l_rps:.1f}x req/s (goal >= {goal}x); {l_cpu / o_cpu:.1f}x less CPU per request"))
legacy_s, ours_first, ours_rerun = [], [], []
for line in open(f"{res}/migration_legacy.txt") if glob.glob(f"{res}/migration_legacy.txt") else []:
    walls = re.findall(r"wall=(?:(\d+):)?(\d+):([\d.]+)", line)
    legacy_s.append(sum(int(h or 0) * 3600 + int(m) * 60 + float(s) for h, m, s in walls))
for f in sorted(glob.glob(f"{res}/migration_ours_*.txt")):
    t = open(f).read()
    if (m := re.search(r"first run:\s+exit 0, ([\d.]+) s, peak RSS ([\d.]+) MB", t)):
        ours_first.append((float(m[1]), float(m[2])))
    if (m := re.search(r"second run:\s+exit 0, ([\d.]+) s", t)):
        ours_rerun.append(float(m[1]))
if legacy_s and ours_first:
    first = med([s for s, _ in ours_first])
    users = re.search(r"migration users: (\d+)", env)
    rows.append((f"migration, {int(users[1]):,} users" if users else "migration",
                 f"{med(legacy_s):.1f} s (its own script; IB rows only)",
                 f"{first:.1f} s, rerun {med(ours_rerun):.1f} s, {max(m for _, m in ours_first):.0f} MB",
                 f"{first / med(legacy_s):.2f}x the legacy time (goal <= 0.9x); rerun {med(ours_rerun) / first:.2f}x (goal <= 0.25x)"))
w = [max(len(r[i]) for r in rows + [("measure", "legacy app", "brokerlink", "ratio")]) for i in range(4)]
for r in [("measure", "legacy app", "brokerlink", "ratio"), tuple("-" * x for x in w), *rows]:
    print("  ".join(c.ljust(x) for c, x in zip(r, w)))
print(f"raw results: {res}")
PY
