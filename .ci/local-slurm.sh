#!/usr/bin/env bash
# Copied from the team's shared tools (local-slurm.sh) so CI needs nothing outside this repository.
# Single-node SLURM "cluster" for CI on Debian 12 (bookworm), no systemd needed.
#
# Usage (as root):
#   local-slurm.sh            # install + configure + start + health check (idempotent)
#   local-slurm.sh stop       # stop the daemons this script started (by pidfile)
#   local-slurm.sh status     # show daemons / sinfo
#
# Env knobs:
#   SLURM_ACCOUNTING=dbd   (default) also install mariadb + slurmdbd so that `sacct`
#                          works; snakemake-executor-plugin-slurm then works with
#                          its defaults (status via sacct).
#   SLURM_ACCOUNTING=none  no database; `sacct` errors with "Slurm accounting storage
#                          is disabled". Snakemake MUST then be run with
#                          `--slurm-status-command squeue` or it hangs forever.
#   SLURM_CGROUPS=0        (default) proctrack/linuxproc + task/none: works anywhere, no
#                          CPU/memory containment. SLURM_CGROUPS=1 uses proctrack/cgroup +
#                          task/cgroup,task/affinity with cgroup.conf (worked here on the
#                          cgroup-v1 hierarchy, incl. OOM enforcement of --mem).
#   SLURM_PARTITION=debug  partition name
#   SLURM_CLUSTER=ci       ClusterName
set -euo pipefail

ACCT="${SLURM_ACCOUNTING:-dbd}"
PART="${SLURM_PARTITION:-debug}"
CLUSTER="${SLURM_CLUSTER:-ci}"
CGROUPS="${SLURM_CGROUPS:-0}"
DBPASS="${SLURM_DB_PASS:-slurmci}"
CONF=/etc/slurm/slurm.conf
DBDCONF=/etc/slurm/slurmdbd.conf
LOGDIR=/var/log/slurm

log() { printf '[slurm-setup %(%H:%M:%S)T] %s\n' -1 "$*"; }
die() { log "FATAL: $*"; exit 1; }

# pid from pidfile, only if that process is alive and is the expected binary
pid_of() { # pidfile comm
  local f=$1 c=$2 p
  [[ -s $f ]] || return 1
  p=$(<"$f")
  [[ -d /proc/$p ]] || return 1
  [[ $(cat /proc/$p/comm 2>/dev/null) == "$c" ]] || return 1
  echo "$p"
}

stop_one() { # pidfile comm
  local p
  if p=$(pid_of "$1" "$2"); then
    log "stopping $2 (pid $p)"
    kill "$p" || true
    for _ in $(seq 1 30); do [[ -d /proc/$p ]] || break; sleep 0.5; done
    [[ -d /proc/$p ]] && { log "$2 did not exit, SIGKILL"; kill -9 "$p" || true; }
  fi
  # slurmctld/slurmdbd (running as 'slurm') cannot unlink their pidfile in /run; a stale
  # /run/slurmctld.pid makes the package prerm run scancel and abort `apt-get purge`.
  if [[ -s $1 ]] && ! pid_of "$1" "$2" >/dev/null; then rm -f "$1"; fi
  return 0
}

stop_all() {
  stop_one /run/slurmd.pid slurmd
  stop_one /run/slurmctld.pid slurmctld
  stop_one /run/slurmdbd.pid slurmdbd
  stop_one /run/mysqld/mysqld.pid mariadbd
  stop_one /run/munge/munged.pid munged
}

case "${1:-up}" in
  stop) stop_all; exit 0 ;;
  status)
    for x in "/run/munge/munged.pid munged" "/run/mysqld/mysqld.pid mariadbd" \
             "/run/slurmdbd.pid slurmdbd" "/run/slurmctld.pid slurmctld" "/run/slurmd.pid slurmd"; do
      set -- $x; p=$(pid_of "$1" "$2") && echo "$2 running pid $p" || echo "$2 not running"
    done
    sinfo || true; exit 0 ;;
  up) ;;
  *) die "unknown command $1" ;;
esac

[[ $EUID -eq 0 ]] || die "must run as root"
T0=$(date +%s)

# ---------------------------------------------------------------- 1. packages
PKGS=(munge slurmctld slurmd slurm-client)
[[ $ACCT == dbd ]] && PKGS+=(slurmdbd mariadb-server)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  log "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # postinst "invoke-rc.d ... denied" messages are expected (no init system).
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/tmp/slurm-apt.log 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends "${missing[@]}" >/tmp/slurm-apt.log 2>&1; } \
    || { tail -30 /tmp/slurm-apt.log; die "apt-get install failed"; }
fi
log "packages ok ($(( $(date +%s) - T0 ))s): $(slurmctld -V)"

# ---------------------------------------------------------------- 2. hostname
H=$(hostname -s)
if ! getent hosts "$H" >/dev/null; then
  log "adding $H to /etc/hosts"
  echo "127.0.0.1 $H" >>/etc/hosts
fi

# ---------------------------------------------------------------- 3. munge
if [[ ! -s /etc/munge/munge.key ]]; then
  log "creating munge key"
  mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null \
    || dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
fi
chown munge:munge /etc/munge /etc/munge/munge.key; chmod 0700 /etc/munge; chmod 0400 /etc/munge/munge.key
install -d -o munge -g munge -m 0755 /run/munge      # systemd RuntimeDirectory= normally does this
install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
if ! pid_of /run/munge/munged.pid munged >/dev/null; then
  log "starting munged"
  su -s /bin/sh munge -c /usr/sbin/munged
fi
for _ in $(seq 1 20); do munge -n </dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.5; done
munge -n </dev/null | unmunge >/dev/null || die "munge round-trip failed"

# ---------------------------------------------------------------- 4. dirs
# slurmctld runs as SlurmUser=slurm and cannot mkdir in /var/spool itself.
install -d -o slurm -g slurm -m 0755 /var/spool/slurmctld "$LOGDIR"
install -d -o root -g root -m 0755 /var/spool/slurmd

# ---------------------------------------------------------------- 5. slurm.conf
# hardware as slurmd sees it, e.g. "NodeName=vm CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=24105"
HW=$(slurmd -C | head -1)
hw() { sed -n "s/.*[[:space:]]$1=\([0-9]*\).*/\1/p" <<<"$HW"; }
CPUS=$(hw CPUs); SOCK=$(hw SocketsPerBoard); CORES=$(hw CoresPerSocket); THR=$(hw ThreadsPerCore)
MEM=$(( $(hw RealMemory) * 85 / 100 ))           # leave headroom for the OS
if [[ $ACCT == dbd ]]; then
  ACCT_LINES="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30"
else
  ACCT_LINES="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
fi
if [[ $CGROUPS == 1 ]]; then
  TRACK_LINES="ProctrackType=proctrack/cgroup
TaskPlugin=task/cgroup,task/affinity"
  NEWCG="CgroupPlugin=autodetect
ConstrainCores=yes
ConstrainRAMSpace=yes"
  if [[ "$(cat /etc/slurm/cgroup.conf 2>/dev/null)" != "$NEWCG" ]]; then
    printf '%s\n' "$NEWCG" >/etc/slurm/cgroup.conf; chmod 0644 /etc/slurm/cgroup.conf
    stop_one /run/slurmd.pid slurmd
  fi
else
  TRACK_LINES="ProctrackType=proctrack/linuxproc
TaskPlugin=task/none"
fi
NEWCONF=$(cat <<EOF
# generated by local-slurm.sh
ClusterName=$CLUSTER
SlurmctldHost=$H
SlurmUser=slurm
AuthType=auth/munge
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd.log
$TRACK_LINES
SwitchType=switch/none
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
$ACCT_LINES
JobCompType=jobcomp/filetxt
JobCompLoc=$LOGDIR/jobcomp.log
# keep finished jobs visible to squeue/scontrol for 30 min (snakemake squeue status mode)
MinJobAge=1800
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
Waittime=0
NodeName=$H CPUs=$CPUS Sockets=$SOCK CoresPerSocket=$CORES ThreadsPerCore=$THR RealMemory=$MEM State=UNKNOWN
PartitionName=$PART Nodes=$H Default=YES MaxTime=INFINITE DefMemPerCPU=1000 State=UP
EOF
)
CHANGED=0
if [[ ! -f $CONF ]] || [[ "$(cat $CONF)" != "$NEWCONF" ]]; then
  log "writing $CONF"
  printf '%s\n' "$NEWCONF" >"$CONF"; chmod 0644 "$CONF"
  CHANGED=1
fi
if ((CHANGED)); then  # config changed: restart what this script manages
  stop_one /run/slurmd.pid slurmd
  stop_one /run/slurmctld.pid slurmctld
fi

# ---------------------------------------------------------------- 6. accounting db
if [[ $ACCT == dbd ]]; then
  install -d -o mysql -g mysql -m 0755 /run/mysqld
  if ! mariadb-admin ping >/dev/null 2>&1; then
    log "starting mariadbd"
    setsid /usr/sbin/mariadbd --user=mysql --pid-file=/run/mysqld/mysqld.pid \
      >>/var/log/slurm/mariadb.out 2>&1 </dev/null &
    for _ in $(seq 1 60); do mariadb-admin ping >/dev/null 2>&1 && break; sleep 0.5; done
    mariadb-admin ping >/dev/null 2>&1 || die "mariadb did not start (see $LOGDIR/mariadb.out)"
  fi
  mariadb -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DBPASS';
    ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$DBPASS';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
  NEWDBD=$(cat <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=slurm
LogFile=$LOGDIR/slurmdbd.log
PidFile=/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DBPASS
StorageLoc=slurm_acct_db
EOF
)
  if [[ ! -f $DBDCONF ]] || [[ "$(cat $DBDCONF)" != "$NEWDBD" ]]; then
    log "writing $DBDCONF"
    printf '%s\n' "$NEWDBD" >"$DBDCONF"
    stop_one /run/slurmdbd.pid slurmdbd              # pick up new password/config
  fi
  chown slurm:slurm "$DBDCONF"; chmod 0600 "$DBDCONF"   # slurmdbd refuses a world-readable conf
  if ! pid_of /run/slurmdbd.pid slurmdbd >/dev/null; then
    log "starting slurmdbd"
    /usr/sbin/slurmdbd
  fi
  for _ in $(seq 1 60); do sacctmgr -n list cluster >/dev/null 2>&1 && break; sleep 0.5; done
  sacctmgr -n list cluster >/dev/null 2>&1 || die "slurmdbd not answering (see $LOGDIR/slurmdbd.log)"
else
  stop_one /run/slurmdbd.pid slurmdbd
fi

# ---------------------------------------------------------------- 7. slurmctld + slurmd
if ! pid_of /run/slurmctld.pid slurmctld >/dev/null; then
  log "starting slurmctld"
  /usr/sbin/slurmctld          # daemonizes, writes /run/slurmctld.pid
fi
for _ in $(seq 1 60); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.5; done
scontrol ping | grep -q UP || die "slurmctld not up (see $LOGDIR/slurmctld.log)"
if [[ $ACCT == dbd ]] && ! sacctmgr -n list cluster format=cluster | grep -qw "$CLUSTER"; then
  sacctmgr -i add cluster "$CLUSTER" >/dev/null   # normally auto-registered by slurmctld
fi
if ! pid_of /run/slurmd.pid slurmd >/dev/null; then
  log "starting slurmd"
  /usr/sbin/slurmd
fi

# ---------------------------------------------------------------- 8. wait for node
state=""
for i in $(seq 1 60); do
  state=$(sinfo -h -n "$H" -o %t 2>/dev/null | head -1)
  case $state in
    idle|mix|alloc) break ;;
    down*|drain*|drng*|fail*) scontrol update nodename="$H" state=resume 2>/dev/null || true ;;
  esac
  sleep 1
done
[[ $state =~ ^(idle|mix|alloc)$ ]] || { sinfo -R; die "node $H state '$state'"; }

# ---------------------------------------------------------------- 9. health check
tmp=$(mktemp -d /tmp/slurm-health.XXXX)
JID=$(sbatch --parsable --wait -p "$PART" -t 1 -o "$tmp/out" -D "$tmp" --wrap 'hostname; echo ok') \
  || die "sbatch health job failed"
grep -q '^ok$' "$tmp/out" || die "health job output wrong: $(cat "$tmp/out")"
st=$(scontrol show job "$JID" 2>/dev/null | sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p')
[[ $st == COMPLETED ]] || die "health job $JID state $st"
if [[ $ACCT == dbd ]]; then
  for _ in $(seq 1 20); do
    sacct -X -n -P -j "$JID" -o State 2>/dev/null | grep -q COMPLETED && break; sleep 0.5
  done
  sacct -X -n -P -j "$JID" -o State | grep -q COMPLETED || die "sacct does not see job $JID"
fi
rm -rf "$tmp"
sinfo
log "SLURM ready in $(( $(date +%s) - T0 ))s (accounting=$ACCT, node=$H, cpus=$CPUS, mem=${MEM}M, health job $JID COMPLETED)"
if [[ $ACCT == none ]]; then
  log "NOTE: run snakemake with --slurm-status-command squeue (sacct is unusable without slurmdbd)"
fi
