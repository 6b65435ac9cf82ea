#!/usr/bin/env bash
# One prepared check for a lent GPU: the benchmark's GPU preset (bfloat16 and float32), then a
# recipe-length derma28 mini-study (the DDPM and the ViT, one seed, real vs real + ddpm), each
# part under its own time limit, and one results file (gpu_check.json; gpu_check.md holds the
# tables docs/benchmarks.md takes). Everything it keeps is in OUT (at most 8 files).
#
#   tools/gpu_check.sh --out=DIR [--data=dermamnist.npz] [--work=DIR]   # on a GPU, <= 10 min
#   tools/gpu_check.sh --out=DIR --parts=study                           # one part again
#   tools/gpu_check.sh --tiny --out=DIR                                  # on a CPU, <= 3 min
#
# --tiny runs the same parts at the tiny sizes (benchmark preset tiny, the study's smoke,mini
# on embedded digits) with cheap compiles: it checks the script, it measures nothing.
# The mini-study needs DermaMNIST at 28² (../shared/data/dermamnist_dev/dermamnist_dev.npz or
# MedMNIST's dermamnist.npz): copy it into the checkout when ../shared does not travel.
# Python packages the GPU image lacks can travel as wheels: --wheels=DIR installs them first
# (docs/benchmarks.md, "On a lent GPU").
set -uo pipefail
cd "$(dirname "$0")/.."

tiny=0 out="" work="" wheels="" parts="benchmark,study"
data="../shared/data/dermamnist_dev/dermamnist_dev.npz"
for arg in "$@"; do
  case "$arg" in
    --tiny) tiny=1 ;;
    --out=*) out="${arg#--out=}" ;;
    --data=*) data="${arg#--data=}" ;;
    --work=*) work="${arg#--work=}" ;;
    --wheels=*) wheels="${arg#--wheels=}" ;;
    --parts=*) parts="${arg#--parts=}" ;;
    *) echo "gpu_check.sh: unknown argument $arg (see the header of $0)" >&2; exit 2 ;;
  esac
done
[[ -n "$out" ]] || { echo "gpu_check.sh: pass --out=DIR" >&2; exit 2; }
mkdir -p "$out"
out="$(cd "$out" && pwd)"
work="${work:-$(mktemp -d -t gpu_check_XXXX)}"
log="$out/gpu_check.log"
# The checkout's ham_synth, installed or not; the compilation cache shared by every part.
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-$work/jax_cache}"
if [[ -n "$wheels" ]]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$work/site" "$wheels"/*.whl || exit 1
  export PYTHONPATH="$PYTHONPATH:$work/site"
fi

if (( tiny )); then
  bench=(--preset=tiny --dtypes=float32 --repeats=1)
  study=(--config=configs/study.py:smoke,mini)
  bench_limit=150 study_limit=150
  export XLA_FLAGS="${XLA_FLAGS:-} --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
  export OMP_NUM_THREADS=1  # Two spinning PyTorch threads on a busy 2-core CPU: 100x slower.
else
  bench=(--preset=gpu --dtypes=bfloat16,float32 --repeats=3)  # bfloat16 first: the goals
  study=(--config=configs/study.py:derma28,mini "--config.data.path=$data")
  bench_limit=240 study_limit=330  # With the installs: one 10-minute command.
  [[ -f "$data" ]] || { echo "gpu_check.sh: no DermaMNIST npz at --data=$data" >&2; exit 2; }
fi

part() {  # part NAME LIMIT_S COMMAND...: runs it under its time limit, logs how it ended.
  local name="$1" limit="$2"; shift 2
  local start=$SECONDS
  echo "[gpu_check] $name: up to $limit s: $*" | tee -a "$log"
  timeout --signal=TERM --kill-after=30 "$limit" "$@" >> "$log" 2>&1
  local rc=$?
  echo "[gpu_check] $name: exit $rc after $((SECONDS - start)) s" | tee -a "$log"
  return $rc
}

status=0
if [[ ",$parts," == *,benchmark,* ]]; then
  part benchmark "$bench_limit" python3 tools/benchmark.py "${bench[@]}" \
    --cases=ddpm,vit,inception,sampler,pipeline --out_dir="$work/bench" || status=1
fi
if [[ ",$parts," == *,study,* ]]; then
  part mini-study "$study_limit" python3 -m ham_synth.main study "${study[@]}" \
    --workdir="$work/study" || status=1
fi
cp "$work/bench/results.md" "$out/benchmark.md" 2>/dev/null
cp "$work/study/report.md" "$out/study_report.md" 2>/dev/null
python3 tools/gpu_report.py --bench="$work/bench/results.json" --study="$work/study" \
  --out="$out" > /dev/null || status=1
echo "[gpu_check] done (status $status): $out/gpu_check.md, gpu_check.json, $(basename "$log")" \
  | tee -a "$log"
exit $status
