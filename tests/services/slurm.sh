#!/usr/bin/env bash
# A real single-node Slurm on this machine, for the tests and for trying the Slurm preset:
# munged, MariaDB, slurmdbd (sacct needs it: Slurm 22.05 has no accounting storage without it),
# slurmctld and slurmd, all as root, all state under one folder. Debian's packages:
#   apt-get install -y slurm-wlm slurmdbd munge mariadb-server
#
#   tests/services/slurm.sh start [--holder PID]   # idempotent; prints the SLURM_CONF to export
#   tests/services/slurm.sh stop [--holder PID]    # cancels every job, then stops the daemons
#   tests/services/slurm.sh status
#
# With --holder, `start` records PID as a user of the cluster and `stop` only forgets it, stopping
# the daemons once no recorded user is alive: two pytest-xdist workers share one cluster, and the
# first to finish does not pull it from under the other. Plain `stop` stops it whatever the users.
# Calls are serialised by an flock, so concurrent starts start it once.
#
# Environment: SIMPSONS_SLURM_DIR (state folder; /tmp/simpsons-slurm-<user>, so that users of one
# machine do not share it), SIMPSONS_SLURM_PORT
# (slurmctld's port; slurmd and slurmdbd take the next two; default: the first of 6817, 6917, ...
# whose three ports are free, so a busy port on the machine cannot keep slurmd from registering).
set -euo pipefail

DIR=${SIMPSONS_SLURM_DIR:-/tmp/simpsons-slurm-$(id -un)}
PORT=${SIMPSONS_SLURM_PORT:-}  # chosen when the cluster starts; recorded in its slurm.conf
CLUSTER=simpsons
NODE=$(hostname -s)
CONF=$DIR/etc/slurm.conf
DBD_CONF=$DIR/etc/slurmdbd.conf
MUNGE_SOCKET=$DIR/munge/munge.socket
DB_SOCKET=$DIR/mysql/mysqld.sock
DEADLINE_SECONDS=${SIMPSONS_SLURM_DEADLINE:-120}
export SLURM_CONF=$CONF

say() { echo "slurm.sh: $*" >&2; }
die() { say "error: $*"; exit 1; }

# Daemons in start order: name, pid file.
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)
pid_file() { echo "$DIR/run/$1.pid"; }

# Whether the daemon recorded in its pid file is running (and is that program, not a reused pid).
alive() {
    local file pid
    file=$(pid_file "$1")
    [[ -s $file ]] || return 1
    pid=$(<"$file")
    [[ -r /proc/$pid/comm ]] && [[ $(</proc/"$pid"/comm) == "$1"* ]]
}

# Poll `$@` until it succeeds, up to DEADLINE_SECONDS; `what` names it in the error.
wait_for() {
    local what=$1
    shift
    local deadline=$((SECONDS + DEADLINE_SECONDS))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || { diagnose; die "$what not ready after ${DEADLINE_SECONDS} s; logs in $DIR/log"; }
        sleep 0.5
    done
}

# What went wrong, on stderr: the node as slurmctld sees it, and the daemons' last log lines.
diagnose() {
    say "diagnosis: $(status 2>&1 | paste -sd';')"
    sinfo -N -h -o "node %N: state %T, reason %E" >&2 2>&1 || true
    local log
    for log in slurmctld slurmd slurmdbd; do
        [[ -f $DIR/log/$log.log ]] || continue
        say "last lines of $log.log:"
        grep -v -e "debug" -e "pmix" "$DIR/log/$log.log" | tail -n 15 >&2 || true
    done
}

require() {
    local missing=()
    for program in munged mariadbd mariadb-install-db slurmdbd slurmctld slurmd sbatch sacct; do
        command -v "$program" >/dev/null || missing+=("$program")
    done
    # Exit 3: this machine cannot run the cluster (the tests skip, saying why); other failures exit 1.
    if ((${#missing[@]})); then
        echo "slurm.sh: missing ${missing[*]}; apt-get install -y slurm-wlm slurmdbd munge mariadb-server" >&2
        exit 3
    fi
    [[ $(id -u) == 0 ]] || { echo "slurm.sh: run as root (SlurmUser=root, jobs run as root)" >&2; exit 3; }
}

# Whether something listens on 127.0.0.1:$1.
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

choose_port() {
    [[ -z $PORT ]] || return 0
    local base
    for base in 6817 6917 7017 7117 7217 7317 7417 7517; do
        if ! listening "$base" && ! listening $((base + 1)) && ! listening $((base + 2)); then
            PORT=$base
            return 0
        fi
    done
    die "no three free ports from 6817 to 7519; set SIMPSONS_SLURM_PORT"
}

write_config() {
    choose_port
    mkdir -p "$DIR"/{etc,run,log,state,spool,munge,mysql}
    chmod 700 "$DIR/munge"
    # This machine's CPUs, sockets, cores and memory, as slurmd itself detects them.
    # RealMemory 5% under it: a node that registers with less memory than configured is drained.
    local hardware memory
    hardware=$(slurmd -C | head -n1 | sed "s/^NodeName=[^ ]* //")
    memory=$(sed -n "s/.*RealMemory=\([0-9]*\).*/\1/p" <<<"$hardware")
    [[ -z $memory ]] || hardware=${hardware/RealMemory=$memory/RealMemory=$((memory * 95 / 100))}
    cat >"$CONF" <<EOF
# Written by tests/services/slurm.sh: one node, this machine.
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire: also how long a requeued job waits before it starts again (default 120 s).
AuthInfo=socket=$MUNGE_SOCKET,cred_expire=10
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$(pid_file slurmctld)
SlurmdPidFile=$(pid_file slurmd)
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
ReturnToService=2
MpiDefault=none
# Time between SIGTERM and SIGKILL for scancel, a time limit or a preemption: a job ends its run.
KillWait=60
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$((PORT + 2))
# For slurmdbd connections this names the munge socket (the default one otherwise).
AccountingStoragePass=$MUNGE_SOCKET
NodeName=$NODE NodeAddr=127.0.0.1 $hardware State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
    cat >"$DBD_CONF" <<EOF
# Written by tests/services/slurm.sh: accounting in a private MariaDB, over its Unix socket.
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$((PORT + 2))
SlurmUser=root
PidFile=$(pid_file slurmdbd)
LogFile=$DIR/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
EOF
    chmod 600 "$DBD_CONF"  # slurmdbd refuses a config that others can read
}

start_munged() {
    [[ -s $DIR/munge/munge.key ]] || dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
    chmod 400 "$DIR/munge/munge.key"
    # --force: munged would refuse to run as root; it is only this cluster's, on its own socket.
    munged --force --socket="$MUNGE_SOCKET" --key-file="$DIR/munge/munge.key" \
        --pid-file="$(pid_file munged)" --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munged.seed"
    wait_for munged munge --socket="$MUNGE_SOCKET" --no-input
}

start_mariadbd() {
    if [[ ! -d $DIR/mysql/mysql ]]; then
        mariadb-install-db --no-defaults --user=root --datadir="$DIR/mysql" --skip-test-db \
            --auth-root-authentication-method=socket >"$DIR/log/mariadb-install.log" 2>&1
    fi
    # No TCP port: slurmdbd, as root, reaches it over its socket (MYSQL_UNIX_PORT) with unix_socket auth.
    setsid mariadbd --no-defaults --user=root --datadir="$DIR/mysql" --socket="$DB_SOCKET" --skip-networking \
        --pid-file="$(pid_file mariadbd)" --log-error="$DIR/log/mariadb.log" </dev/null >/dev/null 2>&1 &
    wait_for mariadbd mariadb --no-defaults --socket="$DB_SOCKET" -e "select 1"
}

start_slurmdbd() {
    # slurmdbd has no -f: it reads slurmdbd.conf beside $SLURM_CONF.
    MYSQL_UNIX_PORT=$DB_SOCKET slurmdbd
    wait_for slurmdbd sacctmgr -n list cluster
}

start_slurmctld() {
    slurmctld -f "$CONF"
    wait_for slurmctld scontrol ping
}

start_slurmd() {
    slurmd -f "$CONF"
}

node_state() { sinfo -h -n "$NODE" -o %T 2>/dev/null; }

# Waits for the node to be in one of the states of the pattern $1: `idle` for a fresh cluster;
# a running one may be busy with jobs (mixed, allocated, completing). A node that slurmctld
# drained or set down (say, it registered before slurmctld was ready) is resumed, and a slurmd
# that died is started again.
wait_for_node() {
    local wanted=$1 deadline=$((SECONDS + DEADLINE_SECONDS)) state next_repair=$((SECONDS + 5))
    while state=$(node_state); [[ ! $state =~ ^($wanted)$ ]]; do
        ((SECONDS < deadline)) || { diagnose; die "node $NODE not ready after ${DEADLINE_SECONDS} s (state '$state', wanted $wanted); logs in $DIR/log"; }
        sleep 1
        ((SECONDS >= next_repair)) || continue
        next_repair=$((SECONDS + 10))
        if ! alive slurmd; then
            say "slurmd is gone (node $state): starting it again"
            start_slurmd 9>&-
        elif [[ $state =~ ^(down|drain|drained|inval|fail) ]]; then
            say "node $NODE is $state ($(sinfo -h -n "$NODE" -o %E)): resuming it"
            scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true
        fi
    done
}

# The node accepts work, and a job runs to completion and is in the accounting (sacct).
check_cluster() {
    wait_for_node idle
    local job
    job=$(sbatch --parsable --output=/dev/null --wrap=true) || die "sbatch failed"
    wait_for "job $job in sacct as COMPLETED" bash -c "sacct -n -X -P -j $job -o State | grep -qx COMPLETED"
}

holders_file() { echo "$DIR/holders"; }

# Whether users were recorded and every one of them is gone: a session killed before its stop.
holders_all_gone() { [[ -s $(holders_file) && -z $(live_holders) ]]; }

# Holders still alive, one pid a line.
live_holders() {
    local file
    file=$(holders_file)
    [[ -f $file ]] || return 0
    while read -r pid; do
        if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then echo "$pid"; fi
    done <"$file" | sort -u
}

# Every job cancelled, and gone: slurmstepd processes outlive slurmd, so no job may be left running.
cancel_jobs() {
    scancel --full --user=root 2>/dev/null || true
    local deadline=$((SECONDS + DEADLINE_SECONDS))
    while [[ -n $(squeue -h -t running,completing -o %i 2>/dev/null) ]] && ((SECONDS < deadline)); do
        sleep 0.5
    done
}

start() {
    require
    local fresh=0 daemon
    for daemon in "${DAEMONS[@]}"; do alive "$daemon" || fresh=1; done
    if ((fresh == 1)); then
        # Some daemon is missing: a half-started cluster is stopped and started whole, on a new config.
        stop_daemons
        write_config
        for daemon in "${DAEMONS[@]}"; do
            say "starting $daemon"
            "start_$daemon" 9>&-  # a daemon must not inherit (and hold) the lock
        done
        check_cluster
    else
        wait_for_node "idle|mixed|allocated|completing"  # running: its jobs, if any, go on
    fi
    if ((fresh == 0)) && holders_all_gone; then
        say "cancelling the jobs of earlier users, who are gone"  # e.g. a session killed before its stop
        cancel_jobs
    fi
    if [[ -n $HOLDER ]]; then
        { live_holders; echo "$HOLDER"; } | sort -u >"$(holders_file).new"
        mv "$(holders_file).new" "$(holders_file)"
    fi
    say "running: sinfo, sbatch, sacct with SLURM_CONF=$CONF"
    echo "export SLURM_CONF=$CONF"
}

stop() {
    if [[ -n $HOLDER ]]; then
        live_holders | grep -vx "$HOLDER" >"$(holders_file).new" || true
        mv "$(holders_file).new" "$(holders_file)"
        if [[ -s $(holders_file) ]]; then
            say "still used by pid(s) $(paste -sd, "$(holders_file)"): left running"
            return 0
        fi
    fi
    stop_daemons
    rm -f "$(holders_file)"
}

stop_daemons() {
    if alive slurmctld; then cancel_jobs; fi
    local reversed=() daemon
    for daemon in "${DAEMONS[@]}"; do reversed=("$daemon" "${reversed[@]}"); done
    for daemon in "${reversed[@]}"; do
        alive "$daemon" || continue
        local pid
        pid=$(<"$(pid_file "$daemon")")
        say "stopping $daemon ($pid)"
        kill "$pid"
        local deadline=$((SECONDS + 60))
        while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
        if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid"; fi
    done
}

status() {
    for daemon in "${DAEMONS[@]}"; do
        if alive "$daemon"; then echo "$daemon running ($(<"$(pid_file "$daemon")"))"; else echo "$daemon stopped"; fi
    done
    if alive slurmctld; then sinfo; fi
}

COMMAND=${1:-}
shift || true
HOLDER=
while (($#)); do
    case $1 in
    --holder) HOLDER=${2:?--holder needs a pid}; shift 2 ;;
    *) die "unknown option $1; accepted: --holder PID" ;;
    esac
done

mkdir -p "$DIR"
exec 9>"$DIR.lock"
flock 9
case $COMMAND in
start) start ;;
stop) stop ;;
status) status ;;
*) die "unknown command '${COMMAND}'; accepted: start, stop, status" ;;
esac
