#!/usr/bin/env bash
# On the lent GPU: the serving benchmark one section at a time (each in its own time limit, merged into
# one result file under $OUT), then the GPU tests of the compiled paths. SECTIONS and LIMITS pair up.
source scripts/device_env.sh
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
export TORCHINDUCTOR_CACHE_DIR=/tmp/inductor-cache  # kept between calls while the machine stays warm
read -r -a sections <<< "${SECTIONS:-sdturbo sana student}"
read -r -a limits <<< "${LIMITS:-300 240 120}"
for i in "${!sections[@]}"; do
  timeout "${limits[$i]}" python3 -m bench serving --device cuda --sections "${sections[$i]}" --merge --out "$OUT" ${BENCH_ARGS:-} 2>&1 \
    | grep -v -E "TracerWarning|Converting a tensor|float32: \[\]|torchvision" | tee -a "$OUT/serving.log"
  echo "section ${sections[$i]} exit ${PIPESTATUS[0]}" | tee -a "$OUT/serving.log"
done
if [ -n "${GPU_TESTS:-}" ]; then
  timeout "${TEST_LIMIT:-200}" python3 -m pytest -m gpu -q -s $GPU_TESTS -p no:cacheprovider 2>&1 | tail -30 | tee "$OUT/gpu-tests.log"
fi
