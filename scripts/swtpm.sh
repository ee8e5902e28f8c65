#!/usr/bin/env bash
# Starts and stops a swtpm TPM 2.0 simulator on a free loopback port pair, by pid.
#
#   swtpm.sh start DIR [--fresh] [--manufacture]
#                                        state in DIR/state; writes DIR/swtpm.pid and
#                                        DIR/swtpm.env (OUTPOST_TCTI=swtpm:host=127.0.0.1,port=P)
#   swtpm.sh stop DIR                    stops the swtpm whose pid is in DIR/swtpm.pid and waits
#                                        until it has exited, so the port and state are free
#
# --fresh discards DIR/state first (a new TPM). --manufacture runs swtpm_setup first (EK
# certificates in NV, like a TPM from a factory), only when DIR/state holds no TPM yet, so a
# restart keeps the same TPM.
# No fixed ports: the kernel here hands out odd ephemeral ports, so we pick a random pair
# and try again when swtpm cannot bind.
set -euo pipefail

usage="usage: swtpm.sh start|stop DIR [--fresh] [--manufacture]"
cmd=${1:?$usage}
dir=${2:?$usage}
shift 2
fresh=0
manufacture=0
for opt in "$@"; do
  case "$opt" in
    --fresh) fresh=1 ;;
    --manufacture) manufacture=1 ;;
    *) echo "$usage" >&2; exit 2 ;;
  esac
done

port_answers() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

stop() {
  [[ -f "$dir/swtpm.pid" ]] || return 0
  local pid
  pid=$(cat "$dir/swtpm.pid")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.05
    done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
    # swtpm is our child only when started in this shell; poll until the pid is gone.
    for _ in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.05
    done
  fi
  rm -f "$dir/swtpm.pid" "$dir/swtpm.env"
}

start() {
  if ((fresh)); then rm -rf "$dir/state"; fi
  mkdir -p "$dir/state"
  if ((manufacture)) && [[ ! -e "$dir/state/tpm2-00.permall" ]]; then
    swtpm_setup --tpm2 --tpmstate "$dir/state" --create-ek-cert --lock-nvram --overwrite \
      >"$dir/swtpm_setup.log" 2>&1 || { cat "$dir/swtpm_setup.log" >&2; exit 1; }
  fi
  for _ in $(seq 1 20); do
    local port=$((20000 + RANDOM % 40000))
    port_answers "$port" && continue
    port_answers $((port + 1)) && continue
    swtpm socket --tpm2 \
      --server "type=tcp,port=$port,bindaddr=127.0.0.1" \
      --ctrl "type=tcp,port=$((port + 1)),bindaddr=127.0.0.1" \
      --tpmstate "dir=$dir/state" \
      --flags not-need-init,startup-clear \
      --log "file=$dir/swtpm.log" >/dev/null 2>&1 &
    local pid=$!
    for _ in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      if port_answers "$port"; then
        echo "$pid" >"$dir/swtpm.pid"
        echo "OUTPOST_TCTI=swtpm:host=127.0.0.1,port=$port" >"$dir/swtpm.env"
        return 0
      fi
      sleep 0.02
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  echo "swtpm.sh: could not start swtpm on any port (see $dir/swtpm.log)" >&2
  exit 1
}

case "$cmd" in
  start) stop; start ;;
  stop) stop ;;
  *) echo "$usage" >&2; exit 2 ;;
esac
