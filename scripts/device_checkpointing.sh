# One device call: the one-step GAN stage of session 23 (heads on three critic blocks, GAN noise up to 0.5,
# weights 0.03/0.05, batch 128, bf16) for STEPS steps from the teacher's weights, without and then with
# gradient_checkpointing; nvidia-smi samples the card's used memory twice a second during each run. Then
#   python scripts/checkpointing_summary.py bench/results/device/gradient-checkpointing-h100 (here, on what came back)
# Carry .device/minilm and .device/wheels; the tree needs checkpoints/shapes-teacher.
source scripts/device_env.sh
export PYTHONPATH=.
STEPS=${STEPS:-60}
nvidia-smi --query-gpu=name --format=csv,noheader | tee $OUT/device.txt
for gc in false true; do
  (while true; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits >> $OUT/mem-$gc.txt; sleep 0.5; done) &
  sampler=$!
  timeout 110 python -m trainer train configs/shapes-dmd2.yaml --run_dir=runs/gc-$gc --max_steps=$STEPS --compile=false \
    --num_workers=2 --eval_every=100000 --eval_prompts=7 --sample_every=100000 --checkpoint_every=100000 --log_every=20 \
    --method_config.student_steps=[1] --method_config.gan_generator_weight=0.03 --method_config.gan_critic_weight=0.05 \
    --method_config.gan_sigma_max=0.5 --method_config.gan_taps=[mid_block,up_blocks.0,up_blocks.1] \
    --gradient_checkpointing=$gc --export.output_dir=runs/gc-export-$gc > $OUT/train-$gc.log 2>&1
  grep -E "^step|Error|error" $OUT/train-$gc.log | tail -4
  kill $sampler
  echo "gradient_checkpointing=$gc peak used MiB: $(sort -n $OUT/mem-$gc.txt | tail -1)"
done
