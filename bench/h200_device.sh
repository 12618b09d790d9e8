#!/usr/bin/env bash
# What one lent-H200 call runs (docs/BENCHMARKS.md, "Reproduce"). The caller has installed the wheels
# (ray, deepspeed and what they need: ../shared/tools/gpu-wheels.sh plus the Ray dashboard's modules) into
# /tmp/site. Stages: issue13 (issue 13's table), anchors (the 1.1B table), scale (7B), test
# (tests/test_gpu.py), attention (SDPA backends), probe (bench/probe.py); several may be given. Results
# land in $OUT.
set -u
out=${OUT:-/tmp/bench-out}
mkdir -p "$out"
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false \
       PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0
nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total,clocks.sm,clocks.max.sm --format=csv
for stage in "$@"; do
  echo "=== $stage $(date +%T)"
  case $stage in
    attention) python3 bench/attention.py --out "$out/attention.json" ;;
    # Issue 13's table in one run: the anchors first (short and predictable), then our path at its defaults,
    # torch.compile at the same batch, and 7B (ZeRO-2 + 8-bit AdamW); about 9 minutes in all.
    issue13) python3 bench/h200.py --out "$out/h200.json" --budget "${BUDGET:-550}" \
               --timeouts torch_eager=70,deepspeed_zero2_eager=80,byzer_magic=230,torch_compile=100,byzer_magic_7b=260 \
               --paths torch_eager,deepspeed_zero2_eager,byzer_magic,torch_compile,byzer_magic_7b ;;
    probe) python3 bench/probe.py --out "$out/probe.json" ${PROBE:-ds_m16_g16 compile_m8_g32} ;;
    anchors) python3 bench/h200.py --out "$out/h200.json" --timeout 240 \
               --paths byzer_magic,torch_eager,torch_compile,deepspeed_zero2_eager,deepspeed_zero2_ray_actor ;;
    # The 7B job spends its first ~1.5 minutes on the CPU (Ray, tokenising, building 6.7B fp32 weights):
    # the GPU test (a 45M-parameter model, < 10 GiB) runs in that window, before the 7B steps that are timed.
    scale+test)
      BYZER_MAGIC_GPU_TEST_OUT="$out/gpu_test.json" python3 -m pytest -q -s -p no:cacheprovider tests/test_gpu.py \
        > "$out/gpu_test.log" 2>&1 &
      test_pid=$!
      python3 bench/h200.py --out "$out/h200.json" --timeout 300 --paths byzer_magic_7b
      wait $test_pid; echo "gpu test exit $?"; tail -15 "$out/gpu_test.log" ;;
    ours) python3 bench/h200.py --out "$out/h200.json" --timeout 300 --paths byzer_magic ;;
    scale) python3 bench/h200.py --out "$out/h200.json" --timeout 420 --paths byzer_magic_7b ;;
    gas8) python3 bench/h200.py --out "$out/h200.json" --timeout 300 --paths byzer_magic_gas8 ;;
    test) BYZER_MAGIC_GPU_TEST_OUT="$out/gpu_test.json" python3 -m pytest -q -s -p no:cacheprovider tests/test_gpu.py \
            2>&1 | tee "$out/gpu_test.log" | tail -40 ;;
    *) echo "unknown stage $stage" ;;
  esac
done
echo "=== done $(date +%T)"
