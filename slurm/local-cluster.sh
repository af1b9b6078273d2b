#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, for tests and for trying slurm/ by hand (as root).
#
#   bash slurm/local-cluster.sh start    # install if missing, start, wait until the node is idle
#   bash slurm/local-cluster.sh status
#   bash slurm/local-cluster.sh stop     # cancel every job, stop the daemons this script started
#
# Debian's slurm-wlm 22.05 + munge, with accounting (slurmdbd on a local MariaDB, socket only): submitit
# (hydra/launcher=slurm) polls `sacct`, and without accounting a job that dies without a result stays
# UNKNOWN and the sweep waits forever. Plugins that need no cgroups: proctrack/linuxproc, task/none.
# The node line is `slurmd -C`. cred_expire=30 shortens the wait of a requeued job (Slurm holds it for
# cred_expire seconds, 120 by default); tests release it at once with `scontrol update StartTime=now`.
set -euo pipefail

CLUSTER=mixerlab
STATE=/var/lib/mixerlab-slurm
LOGS=/var/log/mixerlab-slurm
RUN=/run/mixerlab-slurm
CONF=/etc/slurm
DB_SOCKET=/run/mysqld/mysqld.sock
DB_PASS=mixerlab-local   # the database listens on its unix socket only

log() { echo "[local-cluster] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

need_root() { [ "$(id -u)" -eq 0 ] || die "run as root (it installs packages and starts system daemons)"; }

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local limit=$1 what=$2; shift 2
    local end=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $end ] || die "$what did not come up in ${limit}s (logs: $LOGS)"
        sleep 0.2
    done
}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

install_packages() {
    local missing=()
    command -v slurmctld >/dev/null || missing+=(slurmctld)
    command -v slurmd >/dev/null || missing+=(slurmd)
    command -v sbatch >/dev/null || missing+=(slurm-client)
    command -v slurmdbd >/dev/null || missing+=(slurmdbd)
    command -v munged >/dev/null || missing+=(munge)
    command -v mariadbd >/dev/null || missing+=(mariadb-server)
    [ ${#missing[@]} -eq 0 ] && return
    log "installing ${missing[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurm-wlm munge slurmdbd mariadb-server >/dev/null
}

write_configs() {
    local host node
    host=$(hostname -s)
    # `slurmd -C` prints this machine's node line (CPUs, sockets, cores, memory); the first line is it
    node=$(slurmd -C | head -n1)
    mkdir -p "$CONF" "$STATE/ctld" "$STATE/d" "$LOGS" "$RUN"
    cat >"$CONF/slurm.conf" <<EOF
# Written by mixerlab slurm/local-cluster.sh: a one-node test cluster.
ClusterName=$CLUSTER
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=30
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
ReturnToService=2
KillWait=5
MinJobAge=600
JobRequeue=1
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
$node NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    cat >"$CONF/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile=$RUN/slurmdbd.pid
LogFile=$LOGS/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
    chmod 600 "$CONF/slurmdbd.conf"
}

start_munge() {
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then return; fi
    [ -s /etc/munge/munge.key ] || runuser -u munge -- mungekey --create
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    runuser -u munge -- munged
    wait_for 10 munged sh -c 'munge -n | unmunge'
}

start_database() {
    if mariadb-admin --socket=$DB_SOCKET ping >/dev/null 2>&1; then return; fi
    [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
    mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
    setsid mariadbd --user=mysql --datadir=/var/lib/mysql --socket=$DB_SOCKET --skip-networking \
        --pid-file=/run/mysqld/mariadbd.pid --innodb-buffer-pool-size=32M </dev/null >>"$LOGS/mariadb.log" 2>&1 &
    wait_for 60 mariadb mariadb-admin --socket=$DB_SOCKET ping
    mariadb --socket=$DB_SOCKET -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
}

start_slurm() {
    alive "$RUN/slurmdbd.pid" || slurmdbd
    wait_for 30 slurmdbd sacctmgr -n list cluster
    if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
        sacctmgr -i add cluster "$CLUSTER" >/dev/null
    fi
    local fresh=0
    if ! alive "$RUN/slurmctld.pid"; then slurmctld; fresh=1; fi
    wait_for 30 slurmctld scontrol ping
    if [ $fresh -eq 1 ]; then
        # jobs restored from an earlier run of this cluster lost their processes: do not let them rerun
        squeue -h -o %i | xargs -r scancel
    fi
    alive "$RUN/slurmd.pid" || slurmd
    scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1 || true
    wait_for 60 "node $(hostname -s)" sh -c 'sinfo -h -N -o %t | grep -qE "^(idle|mix|alloc)"'
}

cmd_start() {
    need_root
    if scontrol ping >/dev/null 2>&1 && sinfo -h -N -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)' \
        && sacct -n -X -j 1 >/dev/null 2>&1; then
        log "already running"; return
    fi
    install_packages
    write_configs
    start_munge
    start_database
    start_slurm
    log "up: $(sinfo -h -N -o '%N %t %c CPUs')"
}

stop_pids() {  # stop_pids PIDFILE...: SIGTERM all of them, wait, SIGKILL what is left after 10 s
    local pidfile pids=()
    for pidfile in "$@"; do alive "$pidfile" && pids+=("$(cat "$pidfile")"); done
    [ ${#pids[@]} -eq 0 ] && return 0
    kill "${pids[@]}" 2>/dev/null || true
    local pid
    for _ in $(seq 100); do
        for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && break; pid=""; done
        [ -z "$pid" ] && return 0
        sleep 0.1
    done
    log "still running after SIGTERM: ${pids[*]}: SIGKILL"
    kill -9 "${pids[@]}" 2>/dev/null || true
}

cmd_stop() {
    need_root
    if scontrol ping >/dev/null 2>&1; then squeue -h -o %i | xargs -r scancel || true; fi
    # all at once (each takes ~2 s to exit cleanly); slurmctld keeps unsent accounting in its state
    stop_pids "$RUN/slurmd.pid" "$RUN/slurmctld.pid" "$RUN/slurmdbd.pid" /run/mysqld/mariadbd.pid \
        /run/munge/munged.pid
    log "stopped"
}

cmd_status() {
    local name pidfile
    for name in munged mariadbd slurmdbd slurmctld slurmd; do
        case $name in
            munged) pidfile=/run/munge/munged.pid ;;
            mariadbd) pidfile=/run/mysqld/mariadbd.pid ;;
            *) pidfile=$RUN/$name.pid ;;
        esac
        if alive "$pidfile"; then echo "$name: running ($(cat "$pidfile"))"; else echo "$name: stopped"; fi
    done
    if scontrol ping >/dev/null 2>&1; then sinfo -N; squeue; else echo "controller: not reachable"; return 1; fi
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
