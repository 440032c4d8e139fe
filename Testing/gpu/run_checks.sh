#!/usr/bin/env bash
# The device check of issue 6, prepared to run as ONE command on a lent CUDA machine (about 5-8 minutes on an
# H100/H200): the CUDA tests (Testing/test_cuda.py and the engine tests), then `medtranslate bench` on the GPU.
#
# Here (a machine with pip access):  make gpu-wheels      # the packages the GPU image lacks, into .whl/
#                                    make gpu-models GPU_MODELS="pkg1 pkg2"   # optional: packages (e.g. a trained
#                                        diffusion model) into .gpu/, benchmarked on the 256^3 volume too
# There (device `run`, carry [".whl", ".gpu"]):  bash Testing/gpu/run_checks.sh
# Results land in $OUT (or gpu_out/): gpu.txt, pytest.log, bench.log, BENCHMARKS-gpu.md, bench-gpu.json.
# DEVICE=cpu SIZES=... runs the same steps on a CPU (a dry run of the script itself).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-gpu_out}
DEVICE=${DEVICE:-cuda}
SIZES=${SIZES:-128x128x128,256x256x160,256x256x256,512x512x300}
BIG=${BIG:-256x256x256}
REPEATS=${REPEATS:-3}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    site=/tmp/medtranslate-site
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl \
        || { echo "installing the carried wheels failed"; exit 2; }
    for archive in .whl/*.tar.xz; do [ -e "$archive" ] && tar -C "$site" -xJf "$archive"; done
    export PYTHONPATH="$site:$PWD"
else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi

{ nvidia-smi -L 2>/dev/null || echo "no nvidia-smi"
  "$PYTHON" -c "import torch, monai, SimpleITK; print('torch', torch.__version__, 'cuda', torch.version.cuda,
'available', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '',
'bf16', torch.cuda.is_available() and torch.cuda.is_bf16_supported(), 'monai', monai.__version__,
'SimpleITK', SimpleITK.Version_VersionString())"; } 2>&1 | tee "$OUT/gpu.txt"

"$PYTHON" -m pytest -q -rs -p no:cacheprovider -o addopts="" Testing/test_cuda.py Testing/test_engine_device.py \
    Testing/test_engine_predict.py Testing/test_inference_optimize.py Testing/test_progress.py 2>&1 | tee "$OUT/pytest.log"
tests=${PIPESTATUS[0]}

models=(--model "mr2ct-headphantom-unet2d=$SIZES" --model "t1-t2-brats-unet2d=$BIG")
for package in .gpu/*/model.json; do
    [ -e "$package" ] && models+=(--model "$(dirname "$package")=$BIG")
done
"$PYTHON" -m MedTranslateLib bench --device "$DEVICE" "${models[@]}" --repeats "$REPEATS" --training \
    --sampling-steps 5,10,20,50 --output "$OUT/BENCHMARKS-gpu.md" --json "$OUT/bench-gpu.json" 2>&1 | tee "$OUT/bench.log"
bench=${PIPESTATUS[0]}
echo "tests exit $tests, bench exit $bench"
exit $(( tests || bench ))
