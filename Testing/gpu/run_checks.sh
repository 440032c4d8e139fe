#!/usr/bin/env bash
# The device check of issue 6, prepared to run as ONE command on a lent CUDA machine, inside BUDGET seconds
# (default 540). RUN names the steps (default "tests firstcall bench", about 6 minutes on an H200; the training
# step alone needs about 4): each step gets what is left of the budget and is skipped when less than it needs is left.
#   tests:    the CUDA tests (Testing/test_cuda.py and the engine tests: bf16, channels-last, a real out-of-memory
#             that halves the batch and then falls back to the CPU, diffusion sampling, mixed-precision training);
#   firstcall: Testing/gpu/first_call.py: the first and the second translation of a 256^3 volume in fresh
#             processes, cuDNN's algorithm search on and off;
#   bench:    `medtranslate bench --device cuda`: the default U-Net at SIZES, each carried package
#             (.gpu/models/*, e.g. a pix2pix and a diffusion package) at 256^3, diffusion sampling steps
#             (SAMPLING_STEPS, default 10,20), the GPU rewrites side by side; TRAINING=1 adds training samples/s
#             per family;
#   train:    with the phantom data carried (.gpu/data/Task1), the conditional diffusion config trained on the GPU
#             in bf16 (its full 3000 steps: about 215 s on an H200), then its held-out quality against sampler and
#             steps (5/10/20/50).
#
# Here (a machine with pip access):  make gpu-wheels        # the packages the GPU image lacks, into .whl/
#                                    make gpu-models GPU_MODELS="pkg1 pkg2"   # packages and data into .gpu/
# There (device `run`, carry [".whl", ".gpu"]):  bash Testing/gpu/run_checks.sh    (or RUN=train bash ...)
# Results land in $OUT (or gpu_out/), 10 files at most: summary.txt, pytest.log, first_call.log, first_call.json,
# bench.log, bench-gpu.json, BENCHMARKS-gpu.md, train.log, sampling.log, sampling.json.
# DEVICE=cpu SIZES=... BIG=... DIFFUSION_STEPS=... runs the same steps on a CPU (a dry run of the script itself).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-gpu_out}
DEVICE=${DEVICE:-cuda}
SIZES=${SIZES:-256x256x160,256x256x256}
BIG=${BIG:-256x256x256}
REPEATS=${REPEATS:-1}
SAMPLING_STEPS=${SAMPLING_STEPS:-10,20}
TRAINING=${TRAINING:-0}
BUDGET=${BUDGET:-540}
RUN=${RUN:-tests firstcall bench}
DIFFUSION_STEPS=${DIFFUSION_STEPS:-3000}
PYTHON=${PYTHON:-python3}
START=$(date +%s)
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
summary="$OUT/summary.txt"

if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    site=/tmp/medtranslate-site
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl \
        || { echo "installing the carried wheels failed" | tee -a "$summary"; exit 2; }
    for archive in .whl/*.tar.xz; do [ -e "$archive" ] && tar -C "$site" -xJf "$archive"; done
    export PYTHONPATH="$site:$PWD"
else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi

{ nvidia-smi -L 2>/dev/null || echo "no nvidia-smi"
  "$PYTHON" -c "import torch, monai, SimpleITK; print('torch', torch.__version__, 'cuda', torch.version.cuda,
'available', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '',
'bf16', torch.cuda.is_available() and torch.cuda.is_bf16_supported(), 'monai', monai.__version__,
'SimpleITK', SimpleITK.Version_VersionString())"
  # start-up costs of a fresh translate process, in fresh interpreters: torch, then MONAI on top of it
  "$PYTHON" -c "import time; t = time.perf_counter(); import torch; print('import torch: %.2f s' % (time.perf_counter() - t))"
  "$PYTHON" -c "import time, torch; t = time.perf_counter(); import monai; print('import monai after torch: %.2f s' % (time.perf_counter() - t))"
  } 2>&1 | tee -a "$summary"

# step NAME CAP NEED LOG COMMAND...: run COMMAND under `timeout` for at most CAP seconds and what the budget has
# left; skipped when less than NEED seconds are left
step() {
    local name=$1 cap=$2 need=$3 log=$4; shift 4
    local left=$(( BUDGET - ($(date +%s) - START) - 5 ))
    (( cap > left )) && cap=$left
    if (( left < need )); then echo "$name: skipped, ${left}s of the budget left (needs ${need}s)" | tee -a "$summary"; return 1; fi
    local t0=$(date +%s)
    echo "== $name (at most ${cap}s)" | tee -a "$log"
    timeout --kill-after=5 "$cap" "$@" 2>&1 | tee -a "$log"
    local rc=${PIPESTATUS[0]}
    echo "$name: exit $rc after $(( $(date +%s) - t0 ))s" | tee -a "$summary"
    return "$rc"
}
wants() { [[ " $RUN " == *" $1 "* ]]; }

if wants tests; then
    step tests 100 30 "$OUT/pytest.log" "$PYTHON" -m pytest -q -rs -p no:cacheprovider -o addopts="" \
        Testing/test_cuda.py Testing/test_engine_device.py Testing/test_engine_predict.py \
        Testing/test_inference_optimize.py Testing/test_progress.py
fi

packages=()
for package in .gpu/models/*/model.json; do
    [ -e "$package" ] && packages+=("$(dirname "$package")")
done

if wants firstcall; then
    # the default U-Net, then each carried package, cuDNN's search on and off; diffusion runs at 10 steps
    # (FIRSTCALL="MODEL=search ..." picks the models and knobs, FIRSTCALL_ROUNDS the passes over them)
    calls=()
    if [ -n "${FIRSTCALL:-}" ]; then
        for spec in $FIRSTCALL; do calls+=(--model "$spec"); done
    else
        calls=(--model "mr2ct-headphantom-unet2d=search")
        for package in "${packages[@]}"; do calls+=(--model "$package=search"); done
    fi
    step firstcall 170 60 "$OUT/first_call.log" "$PYTHON" Testing/gpu/first_call.py /tmp/medtranslate-first-call.nii.gz \
        --size "$BIG" "${calls[@]}" --steps 10 --device "$DEVICE" --budget 130 --rounds "${FIRSTCALL_ROUNDS:-2}" \
        --json "$OUT/first_call.json"
fi

if wants bench; then
    models=(--model "mr2ct-headphantom-unet2d=$SIZES")
    for package in "${packages[@]}"; do models+=(--model "$package=$BIG"); done
    extra=()
    (( TRAINING )) && extra+=(--training)
    step bench 300 120 "$OUT/bench.log" "$PYTHON" -m MedTranslateLib bench --device "$DEVICE" "${models[@]}" \
        --repeats "$REPEATS" --sampling-steps "$SAMPLING_STEPS" --output "$OUT/BENCHMARKS-gpu.md" \
        --json "$OUT/bench-gpu.json" "${extra[@]}"
fi

if wants train && [ -d .gpu/data/Task1 ]; then
    work=/tmp/medtranslate-gpu-train
    rm -rf "$work"
    if step train-diffusion 260 200 "$OUT/train.log" "$PYTHON" -m MedTranslateLib train \
        --config mr2ct-phantom-diffusion2d --data .gpu/data/Task1 --device "$DEVICE" --set train.amp=true \
        --steps "$DIFFUSION_STEPS" --output "$work/diffusion" --progress none; then
        step sampling 200 30 "$OUT/sampling.log" "$PYTHON" -m MedTranslateLib.bench_sampling "$work/diffusion" \
            --data .gpu/data --device "$DEVICE" --samplers ddim,dpm++2m --steps 5,10,20,50 \
            --label "GPU-trained" --json "$OUT/sampling.json"
    fi
fi
echo "total $(( $(date +%s) - START ))s of a ${BUDGET}s budget" | tee -a "$summary"
grep -q "exit [1-9]" "$summary" && exit 1
exit 0
