# Shared settings for the e2e harness scripts. Sourced, never run.
#
# VIGIL_CACHE   where built binaries and downloaded jars are kept across runs
#               (default ~/.cache/vigil); safe to delete, it is rebuilt.
# VIGIL_STATE   where running services keep their data, logs, pids and the
#               env file tests read (default $VIGIL_CACHE/run).

set -euo pipefail

E2E_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REPO_DIR="$(cd "$E2E_DIR/.." && pwd)"
export VIGIL_CACHE="${VIGIL_CACHE:-$HOME/.cache/vigil}"
export VIGIL_STATE="${VIGIL_STATE:-$VIGIL_CACHE/run}"
mkdir -p "$VIGIL_CACHE/bin" "$VIGIL_STATE"

KAFKA_VERSION="4.4.0"
KUBERNETES_VERSION="v1.37.2"
ETCD_VERSION="v3.7.3"

log() { printf '[e2e %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# A TCP port on 127.0.0.1 that nothing listens on right now.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_for SECONDS DESCRIPTION COMMAND...: retry COMMAND until it succeeds.
wait_for() {
  local secs=$1 what=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      return 1
    fi
    sleep 0.2
  done
  log "$what is up"
}

pid_alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

# stop_pid PIDFILE NAME: SIGTERM, wait up to 30 s, then SIGKILL.
stop_pid() {
  local pidfile=$1 name=$2
  if pid_alive "$pidfile"; then
    local pid; pid=$(cat "$pidfile")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 150); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null; then
      log "$name did not stop in 30 s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    log "$name stopped"
  fi
  rm -f "$pidfile"
}

# set_env KEY VALUE: record a connection detail in the env file tests read.
set_env() {
  local file="$VIGIL_STATE/env" key=$1 value=$2
  touch "$file"
  grep -v "^export $key=" "$file" > "$file.tmp" || true
  printf 'export %s=%q\n' "$key" "$value" >> "$file.tmp"
  mv "$file.tmp" "$file"
}

get_env() {
  local file="$VIGIL_STATE/env"
  [[ -f $file ]] && (source "$file"; printf '%s' "${!1:-}")
}
