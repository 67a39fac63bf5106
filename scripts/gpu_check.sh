#!/usr/bin/env bash
# The GPU checks, in one go, on a machine with an NVIDIA GPU (under 5 minutes):
#   1. the test suite's GPU-marked tests, required to run (DQNLAB_REQUIRE_GPU=1: no silent skip);
#   2. scripts/bench_throughput.py on the GPU and, as the baseline in the same run, on the CPU only
#      (CUDA_VISIBLE_DEVICES=""), so the two numbers come from one machine at one time.
# Install first with the GPU build:  pip install -e ".[gpu,test]"   (tensorflow[and-cuda])
# Usage: scripts/gpu_check.sh [OUT_DIR]   -- writes gpu_tests.log, bench_gpu.json, bench_cpu.json there.
set -euo pipefail
out="${1:-gpu_check_out}"
mkdir -p "$out"
python="${PYTHON:-python}"

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/nvidia_smi.txt"
"$python" -c "import tensorflow as tf; gpus = tf.config.list_physical_devices('GPU'); print('TensorFlow sees', gpus); assert gpus, 'no GPU visible to TensorFlow'"

DQNLAB_REQUIRE_GPU=1 "$python" -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$out/gpu_tests.log"

steps="${STEPS:-20000}"
echo "== throughput on the GPU ($steps env steps, both settings, diagnostics on and off)"
"$python" scripts/bench_throughput.py --steps "$steps" --repeats 1 --json "$out/bench_gpu.json" --force
echo "== the same on the CPU only (baseline)"
CUDA_VISIBLE_DEVICES="" "$python" scripts/bench_throughput.py --steps "$steps" --repeats 1 --json "$out/bench_cpu.json" --force
