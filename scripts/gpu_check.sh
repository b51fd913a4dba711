#!/usr/bin/env bash
# The GPU check for one NVIDIA GPU with no network (see scripts/gpu_check.py). Writes gpu_check.{json,md} and, on a
# GPU, the planner's BERT-base memory comparison (planner_gpu.{json,md}) under $OUT when it is set (the GPU machine
# sends back only $OUT), else under benchmarks/.
#   bash scripts/gpu_check.sh            # on the GPU machine: at most 5 + 2.5 minutes (each part has a timeout)
#   bash scripts/gpu_check.sh --dry-run  # tiny sizes on the CPU, the same code paths (the test suite runs this)
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
timeout 300 "$PY" scripts/gpu_check.py "$@"
rc=$?
[ $rc -eq 124 ] && echo "gpu_check.py: stopped after 300 s; the parts measured so far are written"
case " $* " in
  *" --dry-run "*) ;;
  *) timeout 150 "$PY" scripts/measure_planner.py --gpu \
       || echo "planner GPU comparison failed or timed out (rows measured so far are written)" ;;
esac
exit $rc
