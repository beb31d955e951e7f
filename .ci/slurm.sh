#!/usr/bin/env bash
# A real one-node Slurm cluster on this machine, for the tests of `--slurm` (tests/launch/).
#
#   source .ci/slurm.sh          # from .ci/run: start it if possible; never fails the CI
#   bash .ci/slurm.sh start      # the same, by hand (the pytest fixture runs this)
#   bash .ci/slurm.sh stop       # stop the daemons it started (by their recorded pids)
#
# Debian's packages (slurmctld, slurmd, slurm-client, munge; slurmdbd + MariaDB for
# accounting, which submitit needs: it reads job states with sacct). No systemd: each
# daemon runs in the foreground in the background, its pid recorded. What it takes to
# work in a container or VM:
# - proctrack/linuxproc and task/none: no cgroups needed; select/cons_tres with CR_CPU.
# - munged runs as the munge user, with /run/munge its own; MariaDB needs /run/mysqld.
# - RealMemory at most what slurmd detects, else the node is INVALID.
# - A requeued job waits cred_expire before it may start again (default 120 s) and the
#   scheduler runs every sched_interval (60 s): 10 and 2 bring it back in ~12 s.
# - KillWait=5 frees a cancelled job's CPUs sooner.
# State, logs and configs live in $TRAINPIPE_SLURM_DIR (default /tmp/trainpipe-slurm);
# /etc/slurm/*.conf are symlinks to them, so plain sinfo/sbatch/sacct work.

_tp_slurm_start() (
    set -euo pipefail
    local dir=${TRAINPIPE_SLURM_DIR:-/tmp/trainpipe-slurm}
    [ "$(id -u)" = 0 ] || { echo "slurm: not root, cannot start daemons" >&2; return 1; }
    if [ -f "$dir/run/slurmctld.pid" ] && kill -0 "$(cat "$dir/run/slurmctld.pid")" 2>/dev/null \
        && [ "$(sinfo -h -o %T 2>/dev/null | head -1)" = idle ]; then
        return 0
    fi
    local pkgs="slurmctld slurmd slurm-client munge slurmdbd mariadb-server" missing=""
    for p in $pkgs; do
        dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q 'install ok installed' || missing="$missing $p"
    done
    if [ -n "$missing" ]; then
        command -v apt-get >/dev/null || { echo "slurm: no apt-get to install$missing" >&2; return 1; }
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
    fi
    mkdir -p "$dir"/{etc,state/ctld,state/d,log,run}
    local host mem node
    host=$(hostname -s)
    mem=$(awk '/MemAvailable/{printf "%d", $2/1024*0.8}' /proc/meminfo)
    node=$(slurmd -C | head -1 | sed -E "s/RealMemory=[0-9]+/RealMemory=${mem}/")
    cat > "$dir/etc/slurm.conf" <<EOF
ClusterName=trainpipe
SlurmctldHost=${host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
JobCompType=jobcomp/none
ReturnToService=2
KillWait=5
SchedulerParameters=sched_interval=2
StateSaveLocation=${dir}/state/ctld
SlurmdSpoolDir=${dir}/state/d
SlurmctldPidFile=${dir}/run/slurmctld.pidfile
SlurmdPidFile=${dir}/run/slurmd.pidfile
SlurmctldLogFile=${dir}/log/slurmctld.log
SlurmdLogFile=${dir}/log/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
${node} NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    mkdir -p /etc/slurm
    ln -sf "$dir/etc/slurm.conf" /etc/slurm/slurm.conf

    if [ ! -s /etc/munge/munge.key ]; then
        setpriv --reuid=munge --regid=munge --init-groups mungekey --create --keyfile=/etc/munge/munge.key
    fi
    mkdir -p /run/munge && chown munge:munge /run/munge && chmod 755 /run/munge
    if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        setsid setpriv --reuid=munge --regid=munge --init-groups /usr/sbin/munged --foreground \
            >"$dir/log/munged.out" 2>&1 </dev/null &
        echo $! > "$dir/run/munged.pid"
        for _ in $(seq 100); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
    fi

    mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
    if ! mariadb -e 'select 1' >/dev/null 2>&1; then
        setsid mariadbd --user=mysql --skip-networking --socket=/run/mysqld/mysqld.sock \
            --pid-file=/run/mysqld/mariadb.pid >"$dir/log/mariadb.out" 2>&1 </dev/null &
        echo $! > "$dir/run/mariadb.pid"
        for _ in $(seq 300); do mariadb -e 'select 1' >/dev/null 2>&1 && break; sleep 0.1; done
    fi
    mariadb -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
      CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmpw';
      GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
    cat > "$dir/etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
LogFile=${dir}/log/slurmdbd.log
PidFile=${dir}/run/slurmdbd.pidfile
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=slurm_acct_db
StorageUser=slurm
StoragePass=slurmpw
EOF
    chmod 600 "$dir/etc/slurmdbd.conf"  # slurmdbd refuses a world-readable one
    ln -sf "$dir/etc/slurmdbd.conf" /etc/slurm/slurmdbd.conf
    setsid slurmdbd -D >"$dir/log/slurmdbd.out" 2>&1 </dev/null &
    echo $! > "$dir/run/slurmdbd.pid"
    for _ in $(seq 300); do sacctmgr -n show cluster >/dev/null 2>&1 && break; sleep 0.1; done
    sacctmgr -n show cluster format=cluster | grep -qw trainpipe || sacctmgr -i add cluster trainpipe >/dev/null

    setsid slurmctld -D >"$dir/log/slurmctld.out" 2>&1 </dev/null &
    echo $! > "$dir/run/slurmctld.pid"
    setsid slurmd -D >"$dir/log/slurmd.out" 2>&1 </dev/null &
    echo $! > "$dir/run/slurmd.pid"
    local state=""
    for _ in $(seq 600); do
        state=$(sinfo -h -o %T 2>/dev/null | head -1 || true)
        [ "$state" = idle ] && break
        sleep 0.1
    done
    [ "$state" = idle ] || { echo "slurm: the node is not idle ('$state'); see $dir/log" >&2; return 1; }
)

_tp_slurm_stop() (
    local dir=${TRAINPIPE_SLURM_DIR:-/tmp/trainpipe-slurm}
    for d in slurmd slurmctld slurmdbd mariadb munged; do
        [ -f "$dir/run/$d.pid" ] || continue
        kill "$(cat "$dir/run/$d.pid")" 2>/dev/null || true
        rm -f "$dir/run/$d.pid"
    done
)

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    case "${1:-start}" in
        start) _tp_slurm_start ;;
        stop) _tp_slurm_stop ;;
        *) echo "usage: $0 [start|stop]" >&2; exit 2 ;;
    esac
else
    # Sourced by .ci/run: a cluster for the Slurm tests if this machine can run one; they skip otherwise.
    if _tp_slurm_start >/dev/null 2>&1; then
        echo "slurm: a one-node cluster runs (tests/launch use it)"
    else
        echo "slurm: no local cluster; the Slurm tests will skip"
    fi
fi
