#!/usr/bin/env bash
# jobs/slurm.sh on a real one-node Slurm: signalled, checkpointed, requeued, resumed, finished,
# and the result byte-identical to an uninterrupted run.
#
#   bash tests/slurm/run-slurm-test.sh [--long]      (as root, from anywhere; needs build/saegap)
#
# What it does (Debian 12: Slurm 22.05, no systemd; see tests/slurm/README.md):
#   1. apt-get installs slurmctld slurmd slurm-client munge libpmix-dev (quiet, skipped when
#      present), starts munged if none answers, writes tests/slurm/slurm.conf.in into a temp
#      dir and starts slurmctld + slurmd from it (every state, spool, log and PID file there).
#   2. makes a small model + 2 SAEs + tokens (tests/python fixtures) and runs the job once
#      uninterrupted with mpirun: the reference.
#   3. short form: sbatch jobs/slurm.sh with 2 tasks x 1 CPU; at ~40% of the units sends the
#      time-limit warning itself (scancel --signal=TERM --batch, what --signal=B:TERM does)
#      and follows the job: TERM -> checkpoint -> verify 3 -> scontrol requeue -> PENDING ->
#      second start (SLURM_RESTART_COUNT=1) -> --resume -> COMPLETED.
#   4. asserts the log's story (TERM received, saegap's ranks stopped themselves - "saegap run:
#      interrupted by a signal" -, requeue, restart 1, complete, in that order), Restarts=1,
#      ExitCode 0:0, the file resumable (verify 3, some units done) between the two starts,
#      saegap verify = 0 at the end, and every dataset under /sites and /correlation equal
#      byte for byte to the reference.
#   --long: also a longer run under a real --time=1 --signal=B:TERM@30 (no scancel): Slurm's
#      own warning, as many requeues as it takes.
# Everything it starts (munged if it started it, slurmctld, slurmd, jobs) is stopped at exit,
# also on failure or Ctrl-C; the temp dir is removed (kept with SAEGAP_SLURM_KEEP=1).
#
# Environment: SAEGAP_BIN (the saegap binary, default build/saegap), SAEGAP_SLURM_CONTEXTS (short run, default 800), SAEGAP_SLURM_LONG_CONTEXTS
# (default: what takes ~75 s uninterrupted, from the short reference), SAEGAP_SLURM_KEEP=1 (keep the temp dir: logs, slurm.conf, results),
# SAEGAP_SLURM_SCRIPT (the batch script under test, default jobs/slurm.sh), and what
# jobs/slurm.sh reads, e.g. SAEGAP_LAUNCH="srun --mpi=pmix" (sbatch passes it on).
set -uo pipefail

cd "$(dirname "$0")/../.." || exit 1
REPO=$PWD
HERE=$REPO/tests/slurm
LONG=0
for a in "$@"; do
  case $a in
    --long) LONG=1 ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    *) echo "usage: bash tests/slurm/run-slurm-test.sh [--long]" >&2; exit 2 ;;
  esac
done

T0=$(date +%s%N)
elapsed() { echo $(( ($(date +%s%N) - T0) / 1000000 )) | awk '{printf "%.1f", $1/1000}'; }
say() { echo "[slurm-test $(elapsed)s] $*"; }
FAILED=0
fail() {
  FAILED=1
  echo "[slurm-test $(elapsed)s] FAIL: $*" >&2
  for f in "${SHOW_ON_FAIL[@]}"; do
    [ -f "$f" ] && { echo "----- $f (last 60 lines)" >&2; tail -n 60 "$f" >&2; }
  done
  exit 1
}
SHOW_ON_FAIL=()

[ "$(id -u)" = 0 ] || { echo "run-slurm-test.sh: must run as root (it installs packages and starts Slurm)" >&2; exit 2; }
# The binary under test (default build/saegap); exported so that sbatch hands it to jobs/slurm.sh.
export SAEGAP=${SAEGAP_BIN:-$REPO/build/saegap}
[ -x "$SAEGAP" ] || { echo "run-slurm-test.sh: $SAEGAP not found: build saegap first (cmake -S . -B build && cmake --build build) or set SAEGAP_BIN" >&2; exit 2; }
PY=/usr/bin/python3
SCRIPT=${SAEGAP_SLURM_SCRIPT:-jobs/slurm.sh}
[ -f "$SCRIPT" ] || { echo "run-slurm-test.sh: no batch script $SCRIPT" >&2; exit 2; }

TMP=$(mktemp -d /tmp/saegap-slurm-test.XXXXXX)
chmod 755 "$TMP"
MUNGED_STARTED=0
SLURM_STARTED=0
JOBIDS=()

# ---------------------------------------------------------------- cleanup (always)
stop_pidfile() {  # stop_pidfile FILE NAME: TERM, up to 10 s, then KILL
  local f=$1 name=$2 pid i
  [ -s "$f" ] || return 0
  pid=$(cat "$f")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null
  for i in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  echo "[slurm-test] $name (pid $pid) ignored TERM for 10 s: KILL" >&2
  kill -KILL "$pid" 2>/dev/null
}
cleanup() {
  local rc=$? id i pid left sid mysid
  trap - EXIT INT TERM
  set +e
  if [ "$SLURM_STARTED" = 1 ]; then
    pid=$(cat "$TMP/slurmctld.pid" 2>/dev/null)
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
      for id in "${JOBIDS[@]}"; do timeout 10 scancel "$id" 2>/dev/null; done
      for i in $(seq 1 40); do   # wait for the jobs' processes to be gone (KillWait=5)
        [ -z "$(timeout 5 squeue -h -o %i 2>/dev/null)" ] && break
        sleep 0.5
      done
    fi
    stop_pidfile "$TMP/slurmd.pid" slurmd
    stop_pidfile "$TMP/slurmctld.pid" slurmctld
    # Whatever a job started still alive (slurmstepd, mpirun, ranks) carries our temp dir in
    # its environment (SLURM_CONF); only processes in other sessions than this script's.
    left=""
    sleep 0.5
    mysid=$(ps -o sid= -p $$ | tr -d ' ')
    for pid in $(grep -lsF "$TMP/slurm.conf" /proc/[0-9]*/environ 2>/dev/null | cut -d/ -f3); do
      sid=$(ps -o sid= -p "$pid" 2>/dev/null | tr -d ' ')
      [ -z "$sid" ] || [ "$sid" = "$mysid" ] && continue   # gone, or this script's own
      left="$left $pid"
    done
    if [ -n "$left" ]; then
      echo "[slurm-test] processes of the test still running after the daemons stopped:" >&2
      ps -o pid,ppid,sid,args -p "${left# }" >&2
      kill -KILL $left 2>/dev/null
      [ $rc = 0 ] && rc=1
    fi
  fi
  if [ "$MUNGED_STARTED" = 1 ]; then stop_pidfile /run/munge/munged.pid munged; fi
  if [ "${SAEGAP_SLURM_KEEP:-0}" = 1 ]; then
    echo "[slurm-test] kept $TMP"
  else
    rm -rf "$TMP"
  fi
  [ $rc = 0 ] && [ $FAILED = 0 ] && echo "[slurm-test $(elapsed)s] PASS" || echo "[slurm-test $(elapsed)s] exit $rc" >&2
  exit $rc
}
trap cleanup EXIT
trap 'echo "[slurm-test] interrupted" >&2; exit 130' INT TERM

# ---------------------------------------------------------------- 1. packages, munge, Slurm
PKGS="slurmctld slurmd slurm-client munge libpmix-dev"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  say "installing$missing"
  export DEBIAN_FRONTEND=noninteractive
  # libpmix-dev is in the same transaction, so it is there before slurmd first starts
  if ! apt-get install -y -qq $missing > "$TMP/apt.log" 2>&1; then
    apt-get update -qq >> "$TMP/apt.log" 2>&1
    apt-get install -y -qq $missing >> "$TMP/apt.log" 2>&1 || { SHOW_ON_FAIL=("$TMP/apt.log"); fail "apt-get install$missing failed"; }
  fi
fi
for b in munged munge unmunge slurmctld slurmd sbatch squeue scontrol scancel sinfo mpirun; do
  command -v "$b" > /dev/null || [ -x "/usr/sbin/$b" ] || fail "$b not found after installing $PKGS"
done

if munge -n 2>/dev/null | unmunge > /dev/null 2>&1; then
  say "munged already running: using it"
else
  [ -s /etc/munge/munge.key ] || { mungekey --create --keyfile /etc/munge/munge.key && chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key; } \
    || fail "no /etc/munge/munge.key and mungekey --create failed"
  install -d -o munge -g munge -m 755 /run/munge
  runuser -u munge -- /usr/sbin/munged > "$TMP/munged.out" 2>&1 || { SHOW_ON_FAIL=("$TMP/munged.out"); fail "munged did not start"; }
  MUNGED_STARTED=1
  ok=0
  for i in $(seq 1 50); do munge -n 2>/dev/null | unmunge > /dev/null 2>&1 && { ok=1; break; }; sleep 0.1; done
  [ $ok = 1 ] || fail "munged started but 'munge -n | unmunge' fails"
  say "munged started (pid $(cat /run/munge/munged.pid 2>/dev/null))"
fi

port_free() { [ -z "$(ss -Htln "sport = :$1" 2>/dev/null)" ]; }
CTLD_PORT=""
for base in 6817 16817 26817 36817; do
  if port_free $base && port_free $((base + 1)); then CTLD_PORT=$base; break; fi
done
[ -n "$CTLD_PORT" ] || fail "no free port pair for slurmctld/slurmd (tried 6817, 16817, 26817, 36817)"
HOST=$(hostname -s)
avail_mb=$(awk '/^MemAvailable:/ {print int($2 / 1024)}' /proc/meminfo)
MEM=$(( avail_mb / 2 ))
[ $MEM -gt 16000 ] && MEM=16000
[ $MEM -ge 500 ] || fail "only ${avail_mb} MB of memory available"
mkdir -p "$TMP/state" "$TMP/spool"
sed -e "s|@DIR@|$TMP|g" -e "s|@HOST@|$HOST|g" -e "s|@MEM@|$MEM|g" \
    -e "s|@CTLD_PORT@|$CTLD_PORT|g" -e "s|@SLURMD_PORT@|$((CTLD_PORT + 1))|g" \
    "$HERE/slurm.conf.in" > "$TMP/slurm.conf"
export SLURM_CONF=$TMP/slurm.conf
SHOW_ON_FAIL=("$TMP/slurmctld.log" "$TMP/slurmd.log")
SLURM_STARTED=1
slurmctld -f "$SLURM_CONF" || fail "slurmctld did not start"
slurmd -f "$SLURM_CONF" || fail "slurmd did not start"
state=""
for i in $(seq 1 60); do
  state=$(sinfo -h -N -o %T 2>/dev/null | head -n 1)
  [ "$state" = idle ] && break
  sleep 0.5
done
[ "$state" = idle ] || fail "node $HOST not idle after 30 s (sinfo: '${state}')"
say "slurmctld + slurmd up on $HOST (ports $CTLD_PORT/$((CTLD_PORT + 1)), conf $SLURM_CONF), node idle"

# Jobs run as root here; Open MPI refuses root unless told (sbatch passes the environment on).
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

# ---------------------------------------------------------------- helpers
progress() { $PY "$HERE/helper.py" progress "$1"; }   # "DONE TOTAL"
job_field() {  # job_field ID FIELD  (from scontrol show job; empty when unknown)
  scontrol -o show job "$1" 2>/dev/null | tr ' ' '\n' | sed -n "s/^$2=//p" | head -n 1
}
make_world() {  # make_world DIR N_CONTEXTS; reference run into DIR/reference.h5, prints its seconds
  local d=$1 n=$2 t
  mkdir -p "$d"
  $PY "$HERE/helper.py" make "$d" "$n" || fail "making the fixture in $d failed"
  t=$(date +%s%N)
  mpirun --oversubscribe --bind-to none -np 2 "$SAEGAP" run "$d/job.job" --out "$d/reference.h5" \
    --threads-per-rank 1 --quiet > "$d/reference.log" 2>&1 \
    || { SHOW_ON_FAIL=("$d/reference.log"); fail "the uninterrupted reference run failed"; }
  "$SAEGAP" verify "$d/reference.h5" > /dev/null || fail "the reference result does not verify"
  echo $(( ($(date +%s%N) - t) / 1000000 )) | awk '{printf "%.1f", $1/1000}'
}
count() { grep -c -- "$1" "$2" 2>/dev/null || true; }
expect_log() {  # expect_log LOG PATTERN WHAT
  grep -q -- "$2" "$1" || fail "the job log does not show $3 (no line matching '$2')"
}
check_result() {  # check_result OUT REFERENCE WHAT
  local v
  "$SAEGAP" verify "$1" > "$TMP/verify.out" 2>&1; v=$?
  [ $v = 0 ] || { cat "$TMP/verify.out" >&2; fail "$3: saegap verify $1 exited $v, want 0 (complete)"; }
  $PY "$HERE/helper.py" compare "$1" "$2" > "$TMP/compare.out" 2>&1 \
    || { cat "$TMP/compare.out" >&2; fail "$3: result differs from the uninterrupted run"; }
  say "$3: verify 0; $(cat "$TMP/compare.out")"
}

# ---------------------------------------------------------------- 2. fixture + reference
W=$TMP/short
N_SHORT=${SAEGAP_SLURM_CONTEXTS:-800}
say "making the short fixture ($N_SHORT contexts x 32 tokens, 3 layers, 2 SAEs) and the uninterrupted reference (mpirun -np 2)"
REF_S=$(make_world "$W" "$N_SHORT") || exit 1
say "reference: ${REF_S} s on 2 ranks x 1 thread"

# ---------------------------------------------------------------- 2b. the script's allocation shape
# The script's defaults (1 node x 2 ranks) are a valid request, and so is the nodes x ranks per
# node form that N-node jobs use (sbatch --test-only asks slurmctld without running anything).
# A one-node cluster cannot show more: the N-node behaviour (a command line's --nodes and
# --ntasks-per-node replacing the defaults) is Slurm's documented precedence, not tested here.
shape=$(sbatch --test-only --nodes=1 --ntasks-per-node=2 --cpus-per-task=1 "$SCRIPT" "$W/job.job" "$W/none.h5" 2>&1) \
  || fail "sbatch --test-only --nodes=1 --ntasks-per-node=2 $SCRIPT refused: $shape"
echo "$shape" | grep -q "using 2 processors" || fail "sbatch --test-only --nodes=1 --ntasks-per-node=2: want 2 processors, got: $shape"
shape=$(sbatch --test-only "$SCRIPT" "$W/job.job" "$W/none.h5" 2>&1) || fail "sbatch --test-only $SCRIPT (its defaults) refused: $shape"
echo "$shape" | grep -q "using 2 processors" || fail "sbatch --test-only $SCRIPT: its defaults should ask 2 processors, got: $shape"
say "allocation shape: the script's defaults and --nodes=1 --ntasks-per-node=2 each ask 2 processors"

# ---------------------------------------------------------------- 3. short form: TERM via scancel
OUT=$W/out.h5
# --signal/--time override the script's #SBATCH lines: the script's B:TERM@300 with a
# 5-minute limit would signal at once; here the warning is sent by hand at 40%.
# finished STATE LABEL: true once the job is COMPLETED; fails on a state it cannot leave.
finished() {
  case $1 in
    COMPLETED) return 0 ;;
    FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY|BOOT_FAIL|DEADLINE|PREEMPTED)
      fail "$2 $JOBID ended $1 (Restarts=$restarts)" ;;
    "") fail "$2 $JOBID vanished from scontrol before COMPLETED was seen" ;;
  esac
  return 1
}
# submit_job MINUTES: sbatch the batch script on $W/job.job into $OUT with a time limit of
# MINUTES and the warning 30 s before it; sets JOBID, LOG and SUBMIT.
submit_job() {
  JOBID=$(sbatch --parsable --ntasks=2 --cpus-per-task=1 --time="$1" --signal=B:TERM@30 \
            --output="$W/job-%j.log" "$SCRIPT" "$W/job.job" "$OUT" --threads-per-rank 1 --quiet) \
    || fail "sbatch --time=$1 failed"
  JOBID=${JOBID%%;*}
  JOBIDS+=("$JOBID")
  LOG=$W/job-$JOBID.log
  SHOW_ON_FAIL=("$LOG" "$TMP/slurmctld.log" "$TMP/slurmd.log")
  SUBMIT=$(date +%s%N)
}
submit_job 5
since() { echo $(( ($(date +%s%N) - SUBMIT) / 1000000 )) | awk '{printf "%.1f", $1/1000}'; }
TIMEOUT=240
say "submitted job $JOBID: sbatch --ntasks=2 --cpus-per-task=1 --time=5 $SCRIPT $W/job.job $OUT --threads-per-rank 1 --quiet"

# wait for RUNNING and 40% of the units in the file
last=""
while :; do
  st=$(job_field "$JOBID" JobState)
  [ "$st" != "$last" ] && { say "  +$(since)s JobState=$st"; last=$st; }
  case $st in
    RUNNING) break ;;
    PENDING|CONFIGURING|"") ;;
    *) fail "job $JOBID went to $st before it was signalled" ;;
  esac
  [ "$(since | cut -d. -f1)" -lt 60 ] || fail "job $JOBID not RUNNING 60 s after submission"
  sleep 0.2
done
while :; do
  read -r done total < <(progress "$OUT")
  if [ "$total" -gt 0 ] && [ $((done * 10)) -ge $((total * 4)) ]; then break; fi
  st=$(job_field "$JOBID" JobState)
  [ "$st" = RUNNING ] || fail "job $JOBID is $st before it reached 40% (units $done/$total)"
  [ "$(since | cut -d. -f1)" -lt 120 ] || fail "job $JOBID did not reach 40% of its units in 120 s (units $done/$total)"
  sleep 0.25
done
scancel --signal=TERM --batch "$JOBID" || fail "scancel --signal=TERM --batch $JOBID failed"
SIG_AT=$(since)
say "  +${SIG_AT}s units $done/$total done: scancel --signal=TERM --batch $JOBID (the time-limit warning of --signal=B:TERM)"

# follow it: requeue, PENDING (check the file there), second start, COMPLETED
last=""; between_ok=0; restarts=0
while :; do
  line=$(scontrol -o show job "$JOBID" 2>/dev/null)
  st=$(sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p' <<< "$line")
  restarts=$(sed -n 's/.*Restarts=\([0-9]*\).*/\1/p' <<< "$line")
  reason=$(sed -n 's/.*Reason=\([^ ]*\).*/\1/p' <<< "$line")
  if [ "$st/$restarts" != "$last" ]; then
    say "  +$(since)s JobState=$st Restarts=${restarts:-?} Reason=${reason:-?}"
    last="$st/$restarts"
  fi
  # Between the two starts the file is closed: copy it (nothing writes it while PENDING)
  # and keep the copy only if the job was still PENDING after the copy.
  if [ $between_ok = 0 ] && [ "$st" = PENDING ] && [ "${restarts:-0}" -ge 1 ]; then
    cp "$OUT" "$TMP/between.h5" 2>/dev/null
    if [ "$(job_field "$JOBID" JobState)" = PENDING ]; then
      "$SAEGAP" verify "$TMP/between.h5" > "$TMP/between.verify" 2>&1; v=$?
      read -r bdone btotal < <(progress "$TMP/between.h5")
      [ $v = 3 ] || { cat "$TMP/between.verify" >&2; fail "between the two starts saegap verify said $v, want 3 (resumable)"; }
      [ "$bdone" -gt 0 ] && [ "$bdone" -lt "$btotal" ] \
        || fail "between the two starts the file has $bdone/$btotal units: the interrupted attempt did not stop part-way"
      between_ok=1
      say "  +$(since)s while PENDING: the file is resumable (verify 3), units $bdone/$btotal"
    fi
  fi
  finished "$st" "job" && break
  [ "$(since | cut -d. -f1)" -lt $TIMEOUT ] || fail "job $JOBID not COMPLETED ${TIMEOUT} s after submission (JobState=$st Restarts=$restarts)"
  sleep 0.25
done
DONE_AT=$(since)
say "  +${DONE_AT}s COMPLETED, $(job_field "$JOBID" ExitCode | sed 's/^/ExitCode=/')"

# ---------------------------------------------------------------- 4. assertions
[ "$(job_field "$JOBID" ExitCode)" = 0:0 ] || fail "job $JOBID ExitCode=$(job_field "$JOBID" ExitCode), want 0:0"
[ "$restarts" = 1 ] || fail "job $JOBID Restarts=$restarts, want 1 (one requeue)"
[ $between_ok = 1 ] || fail "never saw job $JOBID PENDING after the requeue, so the file between the two starts was not checked"
expect_log "$LOG" "saegap slurm: job $JOBID restart 0," "the first start (restart 0)"
expect_log "$LOG" "restart 0, 1 node(s) (.*), 2 rank(s) x 1 thread(s)" "the allocation's shape (nodes, ranks, threads)"
expect_log "$LOG" "saegap slurm: TERM received" "the TERM being received by the batch script"
expect_log "$LOG" "saegap slurm: resumable; requeueing job $JOBID" "verify 3 and the requeue"
expect_log "$LOG" "saegap slurm: job $JOBID restart 1," "a second start with SLURM_RESTART_COUNT=1"
expect_log "$LOG" "saegap slurm: complete" "the final 'complete'"
# saegap's own word that its ranks got the TERM and stopped themselves (rank 0 prints it even
# with --quiet): missing when the launcher SIGKILLed the ranks instead (the file is then still
# resumable - saegap survives kill -9 - but the units in flight are lost and the stop is not
# the checkpoint jobs/slurm.sh promises).
grep -q "saegap run: interrupted by a signal" "$LOG" \
  || fail "the log has no 'saegap run: interrupted by a signal' from the ranks: the TERM did not reach saegap's ranks as a TERM (they were killed; see tests/slurm/README.md)"
[ "$(count "TERM received" "$LOG")" = 1 ] || fail "the log shows $(count "TERM received" "$LOG") TERMs, want 1"
[ "$(count "requeueing job" "$LOG")" = 1 ] || fail "the log shows $(count "requeueing job" "$LOG") requeues, want 1"
# in that order
order=$(grep -o -e "restart 0," -e "TERM received" -e "resumable; requeueing" -e "restart 1," -e "saegap slurm: complete" "$LOG" | tr '\n' '|')
[ "$order" = "restart 0,|TERM received|resumable; requeueing|restart 1,|saegap slurm: complete|" ] \
  || fail "the log's events are out of order: $order"
check_result "$OUT" "$W/reference.h5" "short form (job $JOBID)"
say "short form: TERM at +${SIG_AT}s, COMPLETED at +${DONE_AT}s after submission (reference ${REF_S} s)"
echo "----- job log $LOG"; cat "$LOG"; echo "-----"

# ---------------------------------------------------------------- 5. --long: a real time limit
if [ $LONG = 1 ]; then
  W=$TMP/long
  # Long enough that several 1-minute attempts are needed on this machine today (Slurm's
  # warning comes 13-22 s into each): ~75 s uninterrupted, scaled from the short reference.
  N_LONG=${SAEGAP_SLURM_LONG_CONTEXTS:-$(awk -v n="$N_SHORT" -v t="$REF_S" 'BEGIN {m = int(n * 75 / t); print (m < 800 ? 800 : m)}')}
  say "long form: fixture ($N_LONG contexts) and its uninterrupted reference"
  REF_L=$(make_world "$W" "$N_LONG") || exit 1
  say "long reference: ${REF_L} s on 2 ranks x 1 thread"
  OUT=$W/out.h5
  submit_job 1
  TIMEOUT=900
  say "submitted job $JOBID: sbatch --time=1 --signal=B:TERM@30 (no scancel: Slurm's own warning)"
  last=""
  while :; do
    line=$(scontrol -o show job "$JOBID" 2>/dev/null)
    st=$(sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p' <<< "$line")
    restarts=$(sed -n 's/.*Restarts=\([0-9]*\).*/\1/p' <<< "$line")
    if [ "$st/$restarts" != "$last" ]; then
      extra=""
      [ "$st" = RUNNING ] || { read -r d t < <(progress "$OUT"); [ "$t" -gt 0 ] && extra=" units $d/$t"; }
      say "  +$(since)s JobState=$st Restarts=${restarts:-?}$extra"
      last="$st/$restarts"
    fi
    finished "$st" "long job" && break
    [ "$(since | cut -d. -f1)" -lt $TIMEOUT ] || fail "long job $JOBID not COMPLETED ${TIMEOUT} s after submission"
    sleep 0.5
  done
  LDONE=$(since)
  [ "$(job_field "$JOBID" ExitCode)" = 0:0 ] || fail "long job ExitCode=$(job_field "$JOBID" ExitCode), want 0:0"
  [ "${restarts:-0}" -ge 1 ] || fail "long job finished without being requeued (Restarts=$restarts): the time limit never hit"
  nterm=$(count "TERM received" "$LOG"); nreq=$(count "requeueing job $JOBID" "$LOG")
  [ "$nterm" -ge "$restarts" ] || fail "long job: $restarts requeues but $nterm TERMs in the log"
  [ "$nreq" = "$restarts" ] || fail "long job: Restarts=$restarts but $nreq requeues in the log"
  nint=$(count "saegap run: interrupted by a signal" "$LOG")
  [ "$nint" -ge "$restarts" ] || fail "long job: $restarts requeues but only $nint 'saegap run: interrupted by a signal' from the ranks: they were killed instead of stopping"
  expect_log "$LOG" "saegap slurm: job $JOBID restart $restarts," "the last start (restart $restarts)"
  expect_log "$LOG" "saegap slurm: complete" "the final 'complete'"
  grep -q "not requeueing" "$LOG" && fail "long job: the log shows a file that was not resumable"
  check_result "$OUT" "$W/reference.h5" "long form (job $JOBID)"
  say "long form: $restarts requeue(s), COMPLETED at +${LDONE}s after submission (reference ${REF_L} s)"
  echo "----- job log $LOG"; cat "$LOG"; echo "-----"
fi
exit 0
