#!/usr/bin/env bash
# Train the quality study's variants (configs/quality_study.py) on one machine, PARALLEL runs
# at a time, then write its table (experiments.quality_study; not for runs with fid=0, which
# experiments.evaluate scores afterwards). Each run trains into ROOT/<prefix>_<variant>
# (prefix <data><res>, <data><res>ft with init=...) and logs to ROOT/<prefix>_<variant>.log;
# a run that fails is started again up to TRIES times in all, resuming from its last
# checkpoint (experiments.train resumes by itself), so a crash or a lost process costs at
# most checkpoint_every steps. ROOT/<prefix>_<variant>.status says "ok" or "failed" once a
# run is over; a second call of the script skips the runs already "ok" and resumes the others.
# Usage: bash scripts/run_quality_study.sh [-j PARALLEL] [-o ROOT] [-a CONFIG_ARGS] [VARIANT ...]
#   -j  runs at a time (default 1; three DiT-S 64² runs share one H200 well)
#   -o  the runs' root folder (default workdirs/study)
#   -a  the config's other arguments, e.g. data=fashion_mnist,res=64 (default: its defaults,
#       OpenMoji at 64²)
#   VARIANT ...  (default: all six, in configs/quality_study.py's order)
# Environment: PYTHON (default .venv/bin/python, else python3), TRIES (default 3),
# NOTE (a sentence stored with the table), RESULTS (the table's results root, default
# experiments/results; <device>/ is added).
set -euo pipefail
cd "$(dirname "$0")/.."
parallel=1 root=workdirs/study args=""
while getopts "j:o:a:" option; do
  case "$option" in
    j) parallel="$OPTARG" ;;
    o) root="$OPTARG" ;;
    a) args="$OPTARG" ;;
    *) echo "usage: $0 [-j PARALLEL] [-o ROOT] [-a CONFIG_ARGS] [VARIANT ...]" >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
python="${PYTHON:-python3}"
[ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ] && python=.venv/bin/python
export PYTHON="$python" TRIES="${TRIES:-3}" ROOT="$root"

known=$("$python" -c 'from configs.quality_study import VARIANTS; print(*VARIANTS)')
variants=("$@")
[ ${#variants[@]} -eq 0 ] && read -r -a variants <<< "$known"
for variant in "${variants[@]}"; do
  if ! [[ " $known " == *" $variant "* ]]; then
    echo "run_quality_study: unknown variant '$variant'; the variants are: $known" >&2
    exit 2
  fi
done
# the workdirs' prefix, e.g. openmoji64 (openmoji128ft with init=...), from the config the
# arguments give
read -r prefix fid <<< "$("$python" -c 'import sys; from configs import quality_study as s
c = s.get_config(sys.argv[1])
print(c.data.name + str(c.data.kwargs.resolution) + ("ft" if c.init_from else ""),
      c.objective.fid_count)' "$args")"
export PREFIX="$prefix" ARGS="${args:+,$args}"
mkdir -p "$root"

run_one() {  # one variant, retried (each retry resumes its workdir)
  local variant=$1 try run="$ROOT/${PREFIX}_$1"
  [ "$(cat "$run.status" 2>/dev/null)" = ok ] && return 0
  for try in $(seq 1 "$TRIES"); do
    echo "=== $variant: try $try of $TRIES, $(date -u +%FT%TZ)" >> "$run.log"
    if "$PYTHON" -m experiments.train --config="configs/quality_study.py:variant=$variant$ARGS" \
        --workdir="$run" >> "$run.log" 2>&1; then
      echo ok > "$run.status"
      echo "run_quality_study: $variant done"
      return 0
    fi
  done
  echo failed > "$run.status"
  echo "run_quality_study: $variant failed $TRIES times; see $run.log" >&2
}
export -f run_one
printf '%s\n' "${variants[@]}" | xargs -P "$parallel" -I{} bash -c 'run_one "$@"' _ {}

failed=()
for variant in "${variants[@]}"; do
  [ "$(cat "$root/${prefix}_$variant.status")" = ok ] || failed+=("$variant")
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "run_quality_study: not all runs finished (${failed[*]}); no table written" >&2
  exit 1
fi
if [ "$fid" = 0 ]; then
  echo "run_quality_study: fid=0, so no table: score the runs with experiments.evaluate," \
    "then run experiments.quality_study"
  exit 0
fi
# the runs log their own FID/KID; the table names the device they ran on
device=$("$python" -c 'import jax; print(jax.devices()[0].device_kind)')
"$python" -m experiments.quality_study --workdirs="$root/${prefix}_*/" \
  --name="quality_study_$prefix" --device="$device" --note="${NOTE:-}" \
  --results_dir="${RESULTS:-experiments/results}"
