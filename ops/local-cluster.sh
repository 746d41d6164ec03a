#!/usr/bin/env bash
# A local Meridian cluster of real processes on 127.0.0.1.
#
#   ops/local-cluster.sh up [--regions us-east[,eu-west...]] [--nodes-per-region 3]
#                           [--region-delay-ms N] [--plain]
#   ops/local-cluster.sh status
#   ops/local-cluster.sh down
#
# `up` starts one Raft group per region on free ports, writes
# ops/.local-cluster/cluster.json (each node's id, region, URL, pid, data dir,
# and the master key) and prints a summary. `down` stops only the processes it
# started. MERIDIAN_BIN overrides the binary (default: a debug build).
# Every node gossips counters with every node of the other regions;
# --region-delay-ms adds that delay to every message sent to another region
# (a demo and test stand-in for inter-region latency).
# Inter-node links are mutual TLS: `up` makes the cluster a CA and each node a
# certificate (ops/.local-cluster/tls/, keys 0600) with `meridian cert`;
# --plain runs them on a cluster secret alone, unencrypted (for comparison).
# Everything under ops/.local-cluster/ is its owner's only (the master key is
# in cluster.json).
set -euo pipefail
umask 077
cd "$(dirname "$0")/.."
ROOT=$PWD
STATE=$ROOT/ops/.local-cluster
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=${MERIDIAN_BIN:-$TARGET/debug/meridian}

die() { echo "local-cluster: $*" >&2; exit 1; }
command -v python3 >/dev/null || die "python3 is needed (apt-get install python3)"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

cmd_up() {
  local regions="us-east" per=3 delay=0 plain=0
  while [ $# -gt 0 ]; do
    case "$1" in
      --regions) regions=$2; shift 2 ;;
      --nodes-per-region) per=$2; shift 2 ;;
      --region-delay-ms) delay=$2; shift 2 ;;
      --plain) plain=1; shift ;;
      *) die "unknown option $1" ;;
    esac
  done
  [[ "$per" =~ ^[1-9][0-9]*$ ]] || die "--nodes-per-region must be a positive number"
  [[ "$delay" =~ ^[0-9]+$ ]] || die "--region-delay-ms must be a whole number"
  if [ -f "$STATE/cluster.json" ] && python3 - "$STATE/cluster.json" <<'PY'
import json, os, sys
nodes = json.load(open(sys.argv[1]))["nodes"]
def alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False
sys.exit(0 if any(alive(n["pid"]) for n in nodes) else 1)
PY
  then die "a cluster is already running (ops/local-cluster.sh down first)"; fi
  if [ -z "${MERIDIAN_BIN:-}" ]; then
    cargo build -q -p meridian-node --bin meridian
  fi
  [ -x "$BIN" ] || die "no binary at $BIN"
  rm -rf "$STATE"
  mkdir -p "$STATE"
  local tls="$STATE/tls"
  if [ "$plain" = 0 ]; then
    "$BIN" cert init-ca --dir "$tls" --name "Meridian local cluster CA" >/dev/null
  fi
  local master=${MERIDIAN_MASTER_KEY:-sk-local-$(python3 -c 'import secrets; print(secrets.token_hex(16))')}
  local secret
  secret=$(python3 -c 'import secrets; print(secrets.token_hex(24))')
  local nodes_json="[]"
  IFS=',' read -r -a region_list <<< "$regions"
  # Ports first: every node's config names the other regions' nodes.
  declare -A api_port cluster_port
  for region in "${region_list[@]}"; do
    [[ "$region" =~ ^[A-Za-z0-9_-]+$ ]] || die "bad region name '$region'"
    for i in $(seq 1 "$per"); do
      api_port[$region/$i]=$(free_port); cluster_port[$region/$i]=$(free_port)
    done
  done
  for region in "${region_list[@]}"; do
    local peers="" remote=""
    for i in $(seq 1 "$per"); do
      peers+="    - {raft_id: $i, cluster_addr: \"127.0.0.1:${cluster_port[$region/$i]}\", api_url: \"http://127.0.0.1:${api_port[$region/$i]}\"}"$'\n'
    done
    for other in "${region_list[@]}"; do
      [ "$other" = "$region" ] && continue
      local addrs=""
      for i in $(seq 1 "$per"); do addrs+="\"127.0.0.1:${cluster_port[$other/$i]}\", "; done
      remote+="    $other: [${addrs%, }]"$'\n'
    done
    [ -n "$remote" ] && remote="  remote_regions:"$'\n'"$remote"
    for i in $(seq 1 "$per"); do
      local node="$region-$i" dir="$STATE/$region-$i"
      mkdir -p "$dir"
      local tls_yaml=""
      if [ "$plain" = 0 ]; then
        "$BIN" cert issue --ca-dir "$tls" --region "$region" --node "$i" --host 127.0.0.1 >/dev/null
        tls_yaml="  cluster_tls_ca: $tls/ca.pem
  cluster_tls_cert: $tls/node-$region-$i.pem
  cluster_tls_key: $tls/node-$region-$i.key"
      fi
      cat > "$dir/config.yaml" <<YAML
model_list:
  - model_name: mock-chat
    litellm_params: {model: mock/chat}
  - model_name: mock-embedding
    litellm_params: {model: mock/embedding}
    model_info: {mode: embedding}
meridian:
  node_id: $node
  region: $region
  host: 127.0.0.1
  port: ${api_port[$region/$i]}
  data_dir: $dir/data
  raft_id: $i
  cluster_listen: 127.0.0.1:${cluster_port[$region/$i]}
  inject_region_delay_ms: $delay
$tls_yaml
  peers:
$peers$remote
YAML
      MERIDIAN_MASTER_KEY=$master MERIDIAN_CLUSTER_SECRET=$secret \
        nohup "$BIN" serve --config "$dir/config.yaml" > "$dir/meridian.log" 2>&1 &
      local pid=$!
      nodes_json=$(python3 -c 'import json,sys; n=json.loads(sys.argv[1]); n.append({"id":sys.argv[2],"region":sys.argv[3],"raft_id":int(sys.argv[4]),"url":sys.argv[5],"pid":int(sys.argv[6]),"data_dir":sys.argv[7],"log":sys.argv[8]}); print(json.dumps(n))' \
        "$nodes_json" "$node" "$region" "$i" "http://127.0.0.1:${api_port[$region/$i]}" "$pid" "$dir/data" "$dir/meridian.log")
    done
  done
  python3 -c 'import json,sys; json.dump({"master_key":sys.argv[1],"tls":sys.argv[4],"nodes":json.loads(sys.argv[2])}, open(sys.argv[3],"w"), indent=2)' \
    "$master" "$nodes_json" "$STATE/cluster.json" "$([ "$plain" = 0 ] && echo "$tls" || echo "")"
  # Every node up and every region with a leader, or a clear failure.
  python3 - "$STATE/cluster.json" <<'PY'
import json, sys, time, urllib.request
c = json.load(open(sys.argv[1]))
deadline = time.time() + 60
def status(n):
    req = urllib.request.Request(n["url"] + "/cluster/status", headers={"Authorization": "Bearer " + c["master_key"]})
    with urllib.request.urlopen(req, timeout=2) as r:
        return json.load(r)
pending = list(c["nodes"])
while pending and time.time() < deadline:
    still = []
    for n in pending:
        try:
            if status(n).get("leader") is None:
                still.append(n)
        except Exception:
            still.append(n)
    pending = still
    if pending:
        time.sleep(0.3)
if pending:
    sys.exit("not ready after 60 s: " + ", ".join(n["id"] + " (log: " + n["log"] + ")" for n in pending))
PY
  cmd_status
}

cmd_status() {
  [ -f "$STATE/cluster.json" ] || die "no cluster (ops/local-cluster.sh up first)"
  python3 - "$STATE/cluster.json" <<'PY'
import json, os, sys, urllib.request
c = json.load(open(sys.argv[1]))
print(f"master key: {c['master_key']}")
print(f"{'node':<16}{'region':<12}{'url':<28}{'pid':<9}{'state':<11}{'leader':<8}{'term':<6}applied")
for n in c["nodes"]:
    try:
        os.kill(n["pid"], 0)
        alive = True
    except OSError:
        alive = False
    state = leader = term = applied = "-"
    if alive:
        try:
            req = urllib.request.Request(n["url"] + "/cluster/status", headers={"Authorization": "Bearer " + c["master_key"]})
            s = json.load(urllib.request.urlopen(req, timeout=2))
            state, leader, term, applied = s["state"], s["leader"], s["term"], s["applied_index"]
        except Exception as e:
            state = "unreachable"
    else:
        state = "stopped"
    print(f"{n['id']:<16}{n['region']:<12}{n['url']:<28}{n['pid']:<9}{state:<11}{str(leader):<8}{str(term):<6}{applied}")
PY
}

cmd_down() {
  [ -f "$STATE/cluster.json" ] || { echo "no cluster"; return 0; }
  python3 - "$STATE/cluster.json" <<'PY'
import json, os, signal, sys, time
c = json.load(open(sys.argv[1]))
def alive(pid):
    # Ours only: a pid can be reused by another program after a node died.
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"meridian" in f.read()
    except OSError:
        return False
for n in c["nodes"]:
    if alive(n["pid"]):
        os.kill(n["pid"], signal.SIGTERM)
deadline = time.time() + 10
while time.time() < deadline and any(alive(n["pid"]) for n in c["nodes"]):
    time.sleep(0.1)
for n in c["nodes"]:
    if alive(n["pid"]):
        os.kill(n["pid"], signal.SIGKILL)
print(f"stopped {len(c['nodes'])} nodes")
PY
}

case "${1:-}" in
  up) shift; cmd_up "$@" ;;
  status) cmd_status ;;
  down) cmd_down ;;
  *) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
