#!/usr/bin/env bash
# procplat as a cluster on one machine: a Dask scheduler, N Dask workers, PostgreSQL (with
# --postgres) and K `procplat serve` replicas, all on one shared data folder; and stop them.
#
#   cluster/local-cluster.sh start [options]    start everything, wait until it answers
#   cluster/local-cluster.sh stop  [--run-dir DIR]
#   cluster/local-cluster.sh status [--run-dir DIR]
#
# start options (defaults in brackets):
#   --workers N          Dask worker processes [2]
#   --threads T          threads per worker [2]
#   --memory-limit SIZE  memory limit per worker, e.g. 6GiB [60 % of RAM / N]
#   --replicas K         API replicas, on ports API_PORT .. API_PORT+K-1 [1]
#   --postgres           run a PostgreSQL server for the index (else SQLite in the data
#                        folder, or PROCPLAT_DATABASE_URL when set)
#   --data DIR           the shared data folder, PROCPLAT_DATA [./procplat-data]
#   --run-dir DIR        pid files, logs, worker scratch, PostgreSQL's files [./procplat-cluster]
#   --host ADDR          address everything listens on [127.0.0.1]
#   --scheduler-port P [8786]  --dashboard-port P [8787]  --api-port P [8000]  --pg-port P [5432]
#
# The programs come from PATH (activate the environment that has `pip install -e .[postgres]`):
# dask, procplat, python3; for --postgres, initdb/pg_ctl from PATH or /usr/lib/postgresql/*/bin
# (run as the `postgres` user when this script runs as root). Every process reads
# cluster/dask.yaml (DASK_CONFIG). The admin token is PROCPLAT_ADMIN_TOKEN when set, else one is
# made and kept in RUN_DIR/admin-token. Extra `procplat serve` arguments: PROCPLAT_SERVE_ARGS.
# After start, RUN_DIR/cluster.env holds the addresses (source it to use them).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
command_name=${1:-}
[ $# -gt 0 ] && shift

workers=2 threads=2 memory_limit="" replicas=1 postgres=0
data=./procplat-data run=./procplat-cluster host=127.0.0.1
scheduler_port=8786 dashboard_port=8787 api_port=8000 pg_port=5432

die() { echo "local-cluster: $*" >&2; exit 1; }
usage() {  # the comment at the top of this file
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
  exit "${1:-0}"
}

while [ $# -gt 0 ]; do
  option=$1
  case $option in
    --postgres) postgres=1; shift; continue ;;
    -h|--help) usage ;;
  esac
  [ $# -ge 2 ] || die "$option needs a value"
  value=$2
  case $option in
    --workers) workers=$value ;;
    --threads) threads=$value ;;
    --memory-limit) memory_limit=$value ;;
    --replicas) replicas=$value ;;
    --data) data=$value ;;
    --run-dir) run=$value ;;
    --host) host=$value ;;
    --scheduler-port) scheduler_port=$value ;;
    --dashboard-port) dashboard_port=$value ;;
    --api-port) api_port=$value ;;
    --pg-port) pg_port=$value ;;
    *) die "unknown option $option (see --help)" ;;
  esac
  shift 2
done
for number in "$workers" "$threads" "$replicas" "$scheduler_port" "$dashboard_port" \
              "$api_port" "$pg_port"; do
  case $number in ''|*[!0-9]*) die "not a whole number: '$number'" ;; esac
done

mkdir -p "$run"
run=$(cd "$run" && pwd)
pids=$run/pids logs=$run/logs

# --- processes: each in its own session, its pid file "PID STARTTIME" -------------------------

start_time() {  # field 22 of /proc/PID/stat, counted after the command name in parentheses
  sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f20 || true
}

launch() {  # launch NAME COMMAND...: run COMMAND detached, logging to logs/NAME.log
  local name=$1
  shift
  # The subshell is not a process-group leader, so setsid makes the command's own pid the
  # id of its new session and process group: stop signals the whole group (nanny + worker).
  ( exec setsid "$@" >>"$logs/$name.log" 2>&1 </dev/null ) &
  local pid=$!
  echo "$pid $(start_time "$pid")" >"$pids/$name.pid"
}

group_alive() {  # group_alive PIDFILE: the process group started from PIDFILE still runs
  local pid started stat line fields
  read -r pid started <"$1" || return 1
  if [ -e "/proc/$pid" ] && [ "$(start_time "$pid")" != "$started" ]; then
    return 1  # the pid now belongs to another process: ours is long gone
  fi
  # A member of the group that is not a zombie (an ended process its parent has not reaped
  # yet does not count: it runs nothing and holds nothing but its pid).
  for stat in /proc/[0-9]*/stat; do
    { read -r line <"$stat"; } 2>/dev/null || continue
    read -r -a fields <<<"${line##*) }"
    [ "${fields[2]}" = "$pid" ] && [ "${fields[0]}" != Z ] && return 0
  done
  return 1
}

stop_group() {  # stop_group PIDFILE SECONDS: SIGTERM the group, SIGKILL what is left after SECONDS
  local file=$1 seconds=$2 pid waited=0
  [ -f "$file" ] || return 0
  if group_alive "$file"; then
    read -r pid _ <"$file"
    kill -TERM -- "-$pid" 2>/dev/null || true
    while group_alive "$file" && [ $waited -lt $((seconds * 10)) ]; do
      sleep 0.1
      waited=$((waited + 1))
    done
    if group_alive "$file"; then
      echo "local-cluster: $(basename "$file" .pid) did not stop in ${seconds}s, killing it" >&2
      kill -KILL -- "-$pid" 2>/dev/null || true
      waited=0
      while group_alive "$file" && [ $waited -lt 100 ]; do
        sleep 0.1
        waited=$((waited + 1))
      done
    fi
  fi
  rm -f "$file"
}

fail_start() {
  local name=$1
  echo "local-cluster: $name did not start; the end of $logs/$name.log:" >&2
  tail -n 30 "$logs/$name.log" >&2 || true
  stop_all
  exit 1
}

# --- PostgreSQL --------------------------------------------------------------------------------

pg_bin() {  # the folder with initdb, pg_ctl, psql and createdb (Debian keeps them together)
  local found
  found=$(command -v pg_ctl 2>/dev/null || true)
  [ -n "$found" ] && found=$(readlink -f "$found")
  if [ ! -x "$(dirname "${found:-/}")/createdb" ]; then
    found=$(printf '%s\n' /usr/lib/postgresql/*/bin/pg_ctl | sort -V | tail -n 1)
  fi
  [ -x "$found" ] || die "--postgres: no pg_ctl on PATH nor in /usr/lib/postgresql/*/bin"
  dirname "$found"
}

as_postgres() {  # PostgreSQL refuses to run as root: use its own user then
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

start_postgres() {
  local bin pgdata=$run/postgres
  # Each replica keeps up to 30 connections (a pool of 10 + 20 overflow), plus room for psql.
  local connections=$((30 * replicas + 20))
  [ $connections -ge 100 ] || connections=100
  bin=$(pg_bin)
  if [ ! -s "$pgdata/PG_VERSION" ]; then
    mkdir -p "$pgdata"
    chmod 700 "$pgdata"
    [ "$(id -u)" = 0 ] && chown postgres "$pgdata"
    as_postgres test -w "$pgdata" ||
      die "--postgres: the postgres user cannot write $pgdata (use a --run-dir it can reach)"
    as_postgres "$bin/initdb" -D "$pgdata" -A trust -U procplat -E UTF8 \
      >>"$logs/postgres.log" 2>&1 || fail_start postgres
  fi
  touch "$logs/postgres.log"
  [ "$(id -u)" = 0 ] && chown postgres "$logs/postgres.log"
  as_postgres "$bin/pg_ctl" -D "$pgdata" -l "$logs/postgres.log" -w -t 60 start \
    -o "-p $pg_port -k $pgdata -c listen_addresses=$host -c max_connections=$connections" \
    >/dev/null || fail_start postgres
  echo "$bin" >"$run/postgres.bin"
  if ! as_postgres "$bin/psql" -h "$host" -p "$pg_port" -U procplat -d postgres -tAc \
       "SELECT 1 FROM pg_database WHERE datname = 'procplat'" | grep -q 1; then
    as_postgres "$bin/createdb" -h "$host" -p "$pg_port" -U procplat procplat ||
      fail_start postgres
  fi
  PROCPLAT_DATABASE_URL="postgresql+psycopg://procplat@$host:$pg_port/procplat"
  export PROCPLAT_DATABASE_URL
}

stop_postgres() {
  [ -f "$run/postgres.bin" ] || return 0
  local bin
  bin=$(cat "$run/postgres.bin")
  if [ -f "$run/postgres/postmaster.pid" ]; then
    as_postgres "$bin/pg_ctl" -D "$run/postgres" -m fast -w -t 60 stop >/dev/null ||
      echo "local-cluster: pg_ctl stop failed (see $logs/postgres.log)" >&2
  fi
  rm -f "$run/postgres.bin"
}

# --- waiting -----------------------------------------------------------------------------------

wait_workers() {  # wait until the scheduler answers and has N workers
  local deadline=$((SECONDS + 120))
  until python3 - "$1" "$2" >/dev/null 2>&1 <<'EOF'
import sys
from distributed import Client
with Client(sys.argv[1], timeout="5s") as client:
    client.wait_for_workers(int(sys.argv[2]), timeout=5)
EOF
  do
    group_alive "$pids/scheduler.pid" || fail_start scheduler
    for file in "$pids"/worker-*.pid; do
      group_alive "$file" || fail_start "$(basename "$file" .pid)"
    done
    [ $SECONDS -lt $deadline ] || fail_start scheduler
    sleep 0.3
  done
}

wait_healthy() {  # wait_healthy NAME URL: until GET URL/sys/health answers 200
  local name=$1 url=$2 deadline=$((SECONDS + 120))
  until python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5)' \
        "$url/sys/health" >/dev/null 2>&1; do
    group_alive "$pids/$name.pid" || fail_start "$name"
    [ $SECONDS -lt $deadline ] || fail_start "$name"
    sleep 0.3
  done
}

# --- commands ----------------------------------------------------------------------------------

stop_all() {
  local file
  # Replicas first (they close their Dask client and flush the index), then the workers
  # (their running tasks stay in the index as active and are recovered on the next start),
  # then the scheduler, then the index.
  for file in "$pids"/api-*.pid; do stop_group "$file" 30; done
  for file in "$pids"/worker-*.pid; do stop_group "$file" 30; done
  stop_group "$pids/scheduler.pid" 30
  stop_postgres
  rm -f "$run/cluster.env"
}

start_all() {
  local file i
  mkdir -p "$pids" "$logs" "$run/workers"
  for file in "$pids"/*.pid; do
    [ -e "$file" ] || continue
    group_alive "$file" && die "already running ($file); stop it first: $0 stop --run-dir $run"
    rm -f "$file"
  done
  mkdir -p "$data"
  data=$(cd "$data" && pwd)
  if [ -z "$memory_limit" ]; then
    memory_limit="$(awk -v n="$workers" '/^MemTotal:/ {printf "%d", $2 * 0.6 / n / 1024}' \
      /proc/meminfo)MiB"
  fi
  if [ -z "${PROCPLAT_ADMIN_TOKEN:-}" ]; then
    if [ ! -s "$run/admin-token" ]; then
      (umask 077 && python3 -c 'import secrets; print(secrets.token_urlsafe(32))' \
        >"$run/admin-token")
    fi
    PROCPLAT_ADMIN_TOKEN=$(cat "$run/admin-token")
  fi
  export PROCPLAT_ADMIN_TOKEN PROCPLAT_DATA=$data DASK_CONFIG=$here/dask.yaml
  export PROCPLAT_DASK_ADDRESS="tcp://$host:$scheduler_port"

  [ $postgres = 1 ] && start_postgres

  launch scheduler dask scheduler --host "$host" --port "$scheduler_port" \
    --dashboard-address "$host:$dashboard_port"
  for i in $(seq 1 "$workers"); do
    mkdir -p "$run/workers/worker-$i"
    launch "worker-$i" dask worker "$PROCPLAT_DASK_ADDRESS" --name "worker-$i" \
      --nworkers 1 --nthreads "$threads" --memory-limit "$memory_limit" \
      --local-directory "$run/workers/worker-$i" --host "$host" --dashboard-address "$host:0"
  done
  wait_workers "$PROCPLAT_DASK_ADDRESS" "$workers"

  # One replica at a time: the first one brings the index schema up to date alone.
  local urls=""
  for i in $(seq 1 "$replicas"); do
    local port=$((api_port + i - 1))
    # shellcheck disable=SC2086  # PROCPLAT_SERVE_ARGS is a list of words
    launch "api-$i" procplat serve --host "$host" --port "$port" ${PROCPLAT_SERVE_ARGS:-}
    wait_healthy "api-$i" "http://$host:$port"
    urls="$urls http://$host:$port"
  done

  cat >"$run/cluster.env" <<EOF
export PROCPLAT_DATA='$data'
export PROCPLAT_DASK_ADDRESS='$PROCPLAT_DASK_ADDRESS'
export PROCPLAT_DATABASE_URL='${PROCPLAT_DATABASE_URL:-}'
export PROCPLAT_URLS='${urls# }'
export PROCPLAT_URL='http://$host:$api_port'
export DASK_CONFIG='$DASK_CONFIG'
EOF
  echo "scheduler  $PROCPLAT_DASK_ADDRESS (dashboard http://$host:$dashboard_port)"
  echo "workers    $workers × $threads threads, $memory_limit each"
  echo "index      ${PROCPLAT_DATABASE_URL:-SQLite in $data}"
  echo "api        ${urls# }"
  echo "data       $data"
  [ -s "$run/admin-token" ] && echo "admin      token in $run/admin-token"
  echo "stop with  $0 stop --run-dir $run"
}

status_all() {
  local file any=0
  for file in "$pids"/*.pid; do
    [ -e "$file" ] || continue
    any=1
    if group_alive "$file"; then state=running; else state=dead; fi
    printf '%-12s pid %-8s %s\n' "$(basename "$file" .pid)" "$(cut -d' ' -f1 "$file")" "$state"
  done
  if [ -f "$run/postgres/postmaster.pid" ]; then
    any=1
    printf '%-12s pid %-8s %s\n' postgres "$(head -n 1 "$run/postgres/postmaster.pid")" running
  fi
  [ $any = 1 ] || echo "nothing running from $run"
}

case $command_name in
  start) start_all ;;
  stop) stop_all ;;
  status) status_all ;;
  -h|--help|help) usage ;;
  *) usage 2 >&2 ;;
esac
