#!/bin/bash
# saegap on PBS Pro / Torque: like jobs/slurm.sh. PBS has no portable "signal before the
# walltime", so the script sets its own alarm: TERM to saegap MARGIN seconds before the
# walltime, then qrerun to requeue until the result is complete.
#
#   qsub -v JOB=jobs/demo.job,OUT=result.h5 jobs/pbs.sh
#
#PBS -N saegap
#PBS -l select=1:ncpus=2:mpiprocs=2
#PBS -l walltime=12:00:00
#PBS -r y
#PBS -j oe
set -u
cd "${PBS_O_WORKDIR:-$PWD}"
: "${JOB:?set JOB=job file (qsub -v JOB=...,OUT=...)}" "${OUT:?set OUT=result file}"
SAEGAP=${SAEGAP:-$PWD/build/saegap}
NP=${NP:-$(wc -l < "${PBS_NODEFILE:-/dev/null}" 2>/dev/null || echo 1)}
[ "${NP:-0}" -ge 1 ] 2>/dev/null || NP=1
THREADS=${THREADS:-1}
MARGIN=${MARGIN:-300}
# walltime in seconds: Torque exports PBS_WALLTIME; PBS Pro: ask qstat
WALL=${PBS_WALLTIME:-}
if [ -z "$WALL" ] && command -v qstat >/dev/null; then
  hms=$(qstat -f "$PBS_JOBID" 2>/dev/null | awk -F= '/Resource_List.walltime/ {gsub(/ /,"",$2); print $2}')
  [ -n "$hms" ] && WALL=$(echo "$hms" | awk -F: '{print $1*3600+$2*60+$3}')
fi
mpirun -np "$NP" "$SAEGAP" run "$JOB" --out "$OUT" --resume --threads-per-rank "$THREADS" &
pid=$!
if [ -n "$WALL" ] && [ "$WALL" -gt $((MARGIN + 60)) ]; then
  # USR1, not TERM: mpirun forwards USR1 to every rank (saegap checkpoints on it) but
  # answers a TERM by killing the ranks.
  ( sleep $((WALL - MARGIN)); kill -USR1 "$pid" 2>/dev/null ) &
  alarm=$!
fi
wait "$pid"
[ -n "${alarm:-}" ] && kill "$alarm" 2>/dev/null
"$SAEGAP" verify "$OUT"
case $? in
  0) exit 0 ;;
  3) qrerun "$PBS_JOBID"; exit 0 ;;
  *) exit 1 ;;
esac
