#!/bin/bash
# saegap on Slurm: runs a job file, survives the time limit by checkpointing and requeueing
# itself, and continues with --resume until the result is complete.
#
#   sbatch jobs/slurm.sh JOB_FILE OUT.h5 [more saegap run options]                  1 node x 2 ranks
#   sbatch --nodes=16 --ntasks-per-node=32 --cpus-per-task=4 jobs/slurm.sh JOB OUT.h5   16 nodes
#
# The allocation's shape is nodes x ranks per node (--nodes, --ntasks-per-node), BLIS threads per
# rank = --cpus-per-task; keep ntasks-per-node x cpus-per-task <= cores per node. Give --nodes and
# --ntasks-per-node together on the command line (they replace the defaults below); a bare
# --ntasks=64 is refused by sbatch against the default of one node with at most 2 ranks rather
# than spread in silence. OUT.h5, the job's inputs and the binary must be on a filesystem every
# node sees (the ranks write OUT.h5 through MPI-IO from every node). Environment:
#   SAEGAP         the saegap binary      (default: $SLURM_SUBMIT_DIR/build/saegap)
#   SAEGAP_LAUNCH  how to start the ranks (default: mpirun; or "srun --mpi=pmix")
#
#SBATCH --job-name=saegap
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=2
#SBATCH --cpus-per-task=1
#SBATCH --time=12:00:00
#SBATCH --signal=B:TERM@300
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=saegap-%j.log
set -u
if [ $# -lt 2 ]; then
  echo "usage: sbatch jobs/slurm.sh JOB_FILE OUT.h5 [saegap run options]" >&2
  exit 2
fi
JOB=$1
OUT=$2
shift 2
SUBMIT_DIR=${SLURM_SUBMIT_DIR:-$PWD}
SAEGAP=${SAEGAP:-$SUBMIT_DIR/build/saegap}
LAUNCH=${SAEGAP_LAUNCH:-mpirun}
NTASKS=${SLURM_NTASKS:-1}
THREADS=${SLURM_CPUS_PER_TASK:-1}
NODES=${SLURM_JOB_NUM_NODES:-1}
# Slurm 22.05+: srun no longer takes --cpus-per-task from the batch allocation; this does
export SRUN_CPUS_PER_TASK=$THREADS
cd "$SUBMIT_DIR"
echo "saegap slurm: job ${SLURM_JOB_ID:-?} restart ${SLURM_RESTART_COUNT:-0}, $NODES node(s) (${SLURM_JOB_NODELIST:-?}), $NTASKS rank(s) x $THREADS thread(s), $(date -u +%FT%TZ)"

# --resume: starts the run when OUT does not exist yet, continues it otherwise. saegap refuses
# an option given twice, so --resume and --threads-per-rank are added only when the user's
# options do not already hold them.
has_resume=0
has_threads=0
for a in "$@"; do
  case "$a" in
    --resume) has_resume=1 ;;
    --threads-per-rank | --threads-per-rank=*) has_threads=1 ;;
  esac
done
own=()
[ "$has_resume" = 1 ] || own+=(--resume)
[ "$has_threads" = 1 ] || own+=(--threads-per-rank "$THREADS")
# mpirun inside an allocation starts its daemons on every node through Slurm and places the
# ranks by the allocation's slots (ranks per node); saegap needs only two-sided messages and
# MPI-IO between nodes (docs/cluster.md, "Several nodes"), no MCA setting.
if [ "$LAUNCH" = mpirun ]; then
  mpirun -np "$NTASKS" --bind-to none "$SAEGAP" run "$JOB" --out "$OUT" "${own[@]}" "$@" &
else
  $LAUNCH "$SAEGAP" run "$JOB" --out "$OUT" "${own[@]}" "$@" &
fi
pid=$!
# Slurm's warning (--signal=B:TERM@300) reaches this shell. Pass it on as USR1: mpirun and
# srun forward USR1 unchanged to every rank on every node, and saegap treats it as TERM (the
# ranks finish or abandon their current unit, flush the file and exit 75). A TERM sent to the
# launcher itself would kill the ranks 1 s later (Open MPI) or at once (srun).
got_term=0
trap 'got_term=1; echo "saegap slurm: TERM received, asking saegap to checkpoint"; kill -USR1 "$pid" 2>/dev/null' TERM
wait "$pid"
status=$?
if [ $status -gt 128 ]; then wait "$pid"; status=$?; fi   # wait was interrupted by the trap
trap - TERM

# Signalled before the result file existed (the ranks were still starting): --resume starts it.
if [ "$got_term" = 1 ] && [ ! -e "$OUT" ]; then
  echo "saegap slurm: stopped before $OUT existed; requeueing job ${SLURM_JOB_ID:-?}"
  scontrol requeue "$SLURM_JOB_ID"
  exit 0
fi
# The file itself says what happened (mpirun reports 1 when it was signalled itself).
"$SAEGAP" verify "$OUT"
state=$?
case $state in
  0) echo "saegap slurm: complete"; exit 0 ;;
  3) echo "saegap slurm: resumable; requeueing job ${SLURM_JOB_ID:-?}"
     scontrol requeue "$SLURM_JOB_ID"
     exit 0 ;;
  *) echo "saegap slurm: run exited with $status and the file is not resumable (verify $state); not requeueing" >&2
     exit 1 ;;
esac
