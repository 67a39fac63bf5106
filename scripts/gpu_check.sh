#!/usr/bin/env bash
# The GPU checks, in one go, on a machine with an NVIDIA GPU (about 10 minutes; BATCHED=0 skips step 3):
#   1. the test suite's GPU-marked tests, required to run (DQNLAB_REQUIRE_GPU=1: no silent skip);
#   2. scripts/bench_throughput.py on the GPU and, as the baseline in the same run, on the CPU only
#      (CUDA_VISIBLE_DEVICES=""), so the two numbers come from one machine at one time;
#   3. the batched engine (#24, docs/batched.md): env steps/s against the number of CartPole seeds in one
#      batch, up to 256, on the GPU, then the smaller batches on the CPU only as the baseline.
# Install first with the GPU build:  pip install -e ".[gpu,test]"   (tensorflow[and-cuda])
# Usage: scripts/gpu_check.sh [OUT_DIR]   -- writes gpu_tests.log, bench_gpu.json, bench_cpu.json and
# batched_{gpu,cpu}_{cleanrl,sb3_zoo}.txt there.
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

if [ "${BATCHED:-1}" != "0" ]; then
  # cleanrl learns from step 10,000 (its learning_starts): 15,000 steps give it 500 bursts.
  echo "== the batched engine against the batch size, on the GPU"
  "$python" scripts/bench_batched.py --batched-only --settings cleanrl --runs 1,8,32,128,256 --steps 15000 \
    | tee "$out/batched_gpu_cleanrl.txt"
  "$python" scripts/bench_batched.py --batched-only --settings sb3_zoo --runs 1,8,32,64 --steps 3000 \
    | tee "$out/batched_gpu_sb3_zoo.txt"
  echo "== the same, smaller batches, on the CPU only (baseline)"
  CUDA_VISIBLE_DEVICES="" "$python" scripts/bench_batched.py --batched-only --settings cleanrl --runs 1,8,32 \
    --steps 15000 | tee "$out/batched_cpu_cleanrl.txt"
  CUDA_VISIBLE_DEVICES="" "$python" scripts/bench_batched.py --batched-only --settings sb3_zoo --runs 1,8 \
    --steps 3000 | tee "$out/batched_cpu_sb3_zoo.txt"
fi
