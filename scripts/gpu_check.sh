#!/usr/bin/env bash
# The GPU check for one NVIDIA GPU with no network (see scripts/gpu_check.py). Writes benchmarks/gpu_check.{json,md}
# and, on a GPU, the planner's BERT-base memory comparison (benchmarks/planner_gpu.*).
#   bash scripts/gpu_check.sh            # on the GPU machine, under 8 minutes
#   bash scripts/gpu_check.sh --dry-run  # tiny sizes on the CPU (the test suite runs this)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
"$PY" scripts/gpu_check.py "$@"
rc=$?
case " $* " in
  *" --dry-run "*) ;;
  *) timeout 180 "$PY" scripts/measure_planner.py --gpu || echo "planner GPU comparison failed (see above)" ;;
esac
exit $rc
