#!/usr/bin/env bash
# One prepared check for a lent GPU: a preflight (versions, the JAX backend, the imports; it
# stops everything when JAX or PyTorch sees no GPU, and only then), the benchmark's GPU preset (bfloat16 and float32, the
# DDPM's levers last), then a recipe-length derma28 mini-study (the DDPM and the ViT, one seed,
# real vs real + ddpm), each part under its own time limit (together <= 9.5 min), and one
# results file (gpu_check.json; gpu_check.md holds the tables docs/benchmarks.md takes).
# Everything it keeps is in OUT, six files: bench/results.{json,md} (rewritten after every
# case), study_report.md, gpu_check.{json,md} (written on any exit) and gpu_check.log.
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

tiny=0 out="" work="" wheels="" parts="preflight,benchmark,study"
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
  preflight_limit=60 bench_limit=150 study_limit=150 want_gpu=0
  export XLA_FLAGS="${XLA_FLAGS:-} --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
  export OMP_NUM_THREADS=1  # Two spinning PyTorch threads on a busy 2-core CPU: 100x slower.
else
  bench=(--preset=gpu --dtypes=bfloat16,float32 --repeats=3)  # bfloat16 first: the goals
  study=(--config=configs/study.py:derma28,mini "--config.data.path=$data")
  # 45 + 190 + 280 s, 5 s each to exit after TERM, and ~30 s of installs and report: < 600 s.
  preflight_limit=45 bench_limit=190 study_limit=280 want_gpu=1
  # JAX takes 60% of the GPU's memory, leaving the PyTorch peers room on an 80 GB H100 too.
  export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.6}"
fi

part() {  # part NAME LIMIT_S COMMAND...: runs it under its time limit, logs how it ended.
  local name="$1" limit="$2"; shift 2
  local start=$SECONDS
  echo "[gpu_check] $name: up to $limit s: $*" | tee -a "$log"
  timeout --signal=TERM --kill-after=5 "$limit" "$@" >> "$log" 2>&1
  local rc=$?
  echo "[gpu_check] $name: exit $rc after $((SECONDS - start)) s" | tee -a "$log"
  return $rc
}

finish() {  # On any exit: the study's report and the one results file, from what was written.
  cp "$work/study/report.md" "$out/study_report.md" 2>/dev/null
  python3 tools/gpu_report.py --bench="$out/bench/results.json" --study="$work/study" \
    --out="$out" > /dev/null || status=1
  echo "[gpu_check] done (status $status): $out/gpu_check.md, gpu_check.json, $(basename "$log")" \
    | tee -a "$log"
  exit $status
}
status=0
trap finish EXIT

if [[ ",$parts," == *,preflight,* ]]; then
  part preflight "$preflight_limit" python3 - "$want_gpu" <<'PY'
import importlib.metadata, sys
import jax
print("python", sys.version.split()[0], "| jax backend", jax.default_backend(), jax.devices())
for name in ("jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda12-plugin", "flax", "optax",
             "orbax-checkpoint", "grain", "tensorflow-datasets", "protobuf", "torch", "timm",
             "diffusers", "pytorch-fid"):
    try:
        print(f"  {name} {importlib.metadata.version(name)}")
    except importlib.metadata.PackageNotFoundError:
        print(f"  {name} absent")
import torch
print("torch", torch.__version__, "cuda", torch.cuda.is_available())
if sys.argv[1] == "1" and (jax.default_backend() != "gpu" or not torch.cuda.is_available()):
    print("preflight: JAX or PyTorch sees no GPU; measuring on the CPU would waste the lease.")
    sys.exit(3)
# What tools/benchmark.py and the study import: a failure here shows before they spend minutes.
sys.path.insert(0, "tests/evaluators")
import torch_reference  # noqa: F401  (stubs torchvision's CUDA-only modules, as the benchmark)
import diffusers, grain, timm, tensorflow_datasets  # noqa: E401,F401
import ham_synth.data.prepare, ham_synth.main  # noqa: E401,F401
PY
  rc=$?
  (( rc == 3 )) && { status=1; exit; }  # No GPU: stop. Anything else: logged, the parts go on.
  (( rc == 0 )) || status=1
fi
if [[ ",$parts," == *,benchmark,* ]]; then
  part benchmark "$bench_limit" python3 tools/benchmark.py "${bench[@]}" \
    --cases=ddpm,vit,inception,sampler,pipeline,ddpm_levers --out_dir="$out/bench" || status=1
fi
if [[ ",$parts," == *,study,* ]]; then
  if (( tiny )) || [[ -f "$data" ]]; then
    part mini-study "$study_limit" python3 -m ham_synth.main study "${study[@]}" \
      --workdir="$work/study" || status=1
  else
    echo "[gpu_check] mini-study skipped: no DermaMNIST npz at --data=$data" | tee -a "$log"
    status=1
  fi
fi
