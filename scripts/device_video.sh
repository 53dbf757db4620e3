# The video models on the lent GPU, one call per stage (prepare .device with scripts/prepare_device_carry.sh).
#   bash scripts/device_video.sh teacher   train configs/motion-teacher.yaml, return it (tar) and its samples
#   bash scripts/device_video.sh student   Self-Forcing from checkpoints/motion-teacher, then `bench video`
#   bash scripts/device_video.sh ode       Self-Forcing's ODE initialisation alone (configs/motion-ode-init.yaml; extra
#                                          args go to it), exported to runs/exports/motion-student-ode on the machine; then,
#                                          on the still-warm machine (runs/ survives between calls):
#   bash scripts/device_video.sh student --init_from=runs/exports/motion-student-ode --max_minutes=4
#   bash scripts/device_video.sh ode-student ODE_MIN SF_MIN   both in a row, no bench: the ODE-initialised student
#                                          exports to runs/exports/motion-student-new (id motion-student), logs and
#                                          metrics to runs/video-new (then `done`); it can run detached (setsid) while
#                                          a later call, with another tree, trains something else
#   bash scripts/device_video.sh arms MIN ["plain redmd regression1 fresh"]   configs/motion-continue.yaml's arms side
#                                          by side (one GPU each where there are several), each continuing the shipped
#                                          student (the .device/student delta; `fresh`: the teacher) for MIN minutes:
#                                          exports in runs/exports/motion-student-ARM, logs and metrics in runs/video-arms
#                                          (then `done`); run it detached (setsid) and poll for done
#                                          (ARM_ARGS: overrides for every arm, e.g. --num_workers=3 on a shared GPU)
#   bash scripts/device_video.sh arms-fetch   waits for `arms` (WAIT_SECONDS), returns each export as a delta against
#                                          the teacher (arm-ARM.tar) and the logs. GPU memory (H100, session 16): plain
#                                          ~14 GB, a regression arm ~19 GB at batch 32; a teacher stage variant (batch
#                                          256) 18-29 GB and a DMD2 student with regression 13-30 GB, so on one 80 GB
#                                          card the three arms leave no room for the image runs (they died of OOM)
#   bash scripts/device_video.sh bench     `bench video --compiled` of the teacher and the shipped student (from the
#                                          .device/student delta), and of `ode-student`/`arms` exports still on the
#                                          machine (W12=1 adds the shipped student at KV window 12)
# With both video checkpoints the tree outgrows the 64 MiB carry: move the student out of the tree and carry it
# as a delta (scripts/carry_delta.py pack ... .device/student; unpack it on the device before benchmarking).
source scripts/device_env.sh
export PYTHONPATH=.
STAGE=${1:?teacher or student}
shift || true
if [ "$STAGE" = teacher ]; then  # further stages: RUN=runs/motion-teacher-2 ... teacher --init_from=checkpoints/motion-teacher --run_dir=$RUN
  RUN=${RUN:-runs/motion-teacher}
  python -m trainer train configs/motion-teacher.yaml "$@" 2>&1 | grep -v "kept in float32" | tail -30
  cp $RUN/samples/latest.png $OUT/teacher-samples.png
  cp $RUN/metrics.jsonl $OUT/teacher-metrics.jsonl
  tar cf - -C checkpoints motion-teacher | split -b 15000000 - $OUT/motion-teacher.tar.
elif [ "$STAGE" = ode ]; then
  python -m trainer train configs/motion-ode-init.yaml "$@" 2>&1 | grep -v "kept in float32" | tail -20
  cp runs/motion-ode-init/metrics.jsonl $OUT/ode-init-metrics.jsonl
  cp runs/motion-ode-init/samples/latest.png $OUT/ode-init-samples.png 2>/dev/null
elif [ "$STAGE" = ode-student ]; then  # results in runs/video-new (it may run detached, outliving the call)
  V=runs/video-new && rm -rf $V && mkdir -p $V
  TEACHER=${TEACHER:-checkpoints/motion-teacher}  # detached: a copy under runs/ that a later call's tree cannot touch
  python -m trainer train configs/motion-ode-init.yaml --teacher=$TEACHER --max_minutes=${1:?ODE minutes} 2>&1 | grep -v "kept in float32" > $V/ode-init.log
  cp runs/motion-ode-init/metrics.jsonl $V/ode-init-metrics.jsonl
  python -m trainer train configs/motion-self-forcing.yaml --teacher=$TEACHER --init_from=runs/exports/motion-student-ode \
    --run_dir=runs/motion-self-forcing-ode --max_minutes=${2:?Self-Forcing minutes} \
    --export.output_dir=runs/exports/motion-student-new "${@:3}" 2>&1 | grep -v "kept in float32" > $V/student-new.log
  cp runs/motion-self-forcing-ode/metrics.jsonl $V/student-new-metrics.jsonl
  touch $V/done
elif [ "$STAGE" = arms ]; then  # results in runs/video-arms (run it detached: it outlives a call)
  V=runs/video-arms && rm -rf $V && mkdir -p $V
  TEACHER=${TEACHER:-checkpoints/motion-teacher}
  # several trainings side by side: without a cap each process's torch takes every core, and the judge's many small
  # CPU ops at the final evaluation crawl (session 16: three arms passed their time budget and had not exported 8 min on)
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
  START=runs/exports/motion-student-shipped  # under runs/: a later call's tree cannot take it away
  rm -rf $START && python scripts/carry_delta.py unpack .device/student $TEACHER $START
  ARMS=${2:-plain redmd regression1 fresh}
  GPUS=$(nvidia-smi -L 2>/dev/null | wc -l)  # several GPUs: one arm each (round robin); one: they share it
  [ "$GPUS" -ge 1 ] || GPUS=1
  i=0
  for arm in $ARMS; do
    case $arm in
      plain) extra= ;;
      redmd) extra=--method_config.reward_beta=2.0 ;;
      regression) extra=--method_config.regression_weight=0.25 ;;
      regression1) extra=--method_config.regression_weight=1.0 ;;  # 0.25 moved nothing in 40 CPU steps (motion-speed-cpu/)
      fresh) extra="--method_config.regression_weight=0.25 --init_from=$TEACHER" ;;  # DMD + regression from the teacher
      *) echo "unknown arm $arm (plain, redmd, regression, regression1, fresh)"; exit 2 ;;
    esac
    CUDA_VISIBLE_DEVICES=$((i % GPUS)) python -m trainer train configs/motion-continue.yaml --teacher=$TEACHER --init_from=$START \
      --max_minutes=${1:?minutes} --run_dir=runs/motion-$arm --export.output_dir=runs/exports/motion-student-$arm $extra ${ARM_ARGS:-} \
      2>&1 | grep --line-buffered -v "kept in float32" > $V/$arm.log &  # line-buffered: a killed call keeps its log
    i=$((i + 1))
  done
  wait
  for arm in $ARMS; do cp runs/motion-$arm/metrics.jsonl $V/$arm-metrics.jsonl; done
  touch $V/done
elif [ "$STAGE" = arms-fetch ]; then  # waits up to WAIT_SECONDS (default 540) for `arms`, then returns each arm's
  # export as a delta against the teacher (~13 MB, one $OUT file each) and the logs; unpack here with
  #   python scripts/carry_delta.py unpack delta-ARM checkpoints/motion-teacher runs/motion-student-ARM
  V=runs/video-arms TEACHER=${TEACHER:-checkpoints/motion-teacher}
  for i in $(seq ${WAIT_SECONDS:-540}); do [ -f $V/done ] && break; sleep 1; done
  [ -f $V/done ] || echo "arms still running after ${WAIT_SECONDS:-540} s: returning what has exported"
  for log in $V/*.log; do echo "== $log"; grep -E "^eval|budget|Error" $log | tail -n 3; done
  for export in runs/exports/motion-student-*; do
    arm=${export#runs/exports/motion-student-}
    [ "$arm" = shipped ] || [ ! -f $export/card.json ] && continue
    rm -rf runs/delta-$arm && python scripts/carry_delta.py pack $export $TEACHER runs/delta-$arm > /dev/null \
      && tar cf $OUT/arm-$arm.tar -C runs delta-$arm
  done
  tar cf $OUT/arms-logs.tar -C $V .
elif [ "$STAGE" = bench ]; then  # the teacher and the shipped student (the .device/student delta); a student from
  # `ode-student` still on the machine (runs/exports/motion-student-new) is benched beside them as motion-student-new
  copy_as() {  # SOURCE ID: a copy of a checkpoint under checkpoints/ID, its card renamed so the registry tells them apart
    rm -rf checkpoints/$2 && cp -r $1 checkpoints/$2 && sed -i "s/\"id\": \"[^\"]*\"/\"id\": \"$2\"/" checkpoints/$2/card.json
  }
  rm -rf checkpoints/motion-student
  python scripts/carry_delta.py unpack .device/student checkpoints/motion-teacher checkpoints/motion-student
  MODELS=motion-teacher,motion-student
  for new in new plain redmd regression regression1 fresh; do
    [ -d runs/exports/motion-student-$new ] && copy_as runs/exports/motion-student-$new motion-student-$new && MODELS=$MODELS,motion-student-$new
  done
  if [ "${W12:-0}" = 1 ]; then
    # the shipped student at its exported KV window (12) beside the window 8 its card now serves (its training
    # rollouts' window): on 32 long clips on the CPU drift was 4.53 points at 12 and 0.63 at 8
    copy_as checkpoints/motion-student motion-student-w12
    sed -i 's/"window": 8/"window": 12/' checkpoints/motion-student-w12/transformer/config.json
    MODELS=$MODELS,motion-student-w12
  fi
  # bench_order: the teacher first, then the shipped student with its CUDA-graph rows and long horizon, then the rest
  timeout ${BENCH_SECONDS:-480} python -m bench video --compiled ${BENCH_ARGS:---clips 64 --long-clips 32 --teacher-steps 8,16} \
    --models $MODELS --out $OUT/bench 2>&1 | grep -v "kept in float32" | tail -25
  timeout 100 python scripts/probe_video_drift.py --device cuda --clips 32 --batch 32 --models ${MODELS#motion-teacher,} \
    2>&1 | grep -v "kept in float32" | tee $OUT/bench/drift-32.txt
  timeout 60 python scripts/probe_video_motion.py --device cuda --clips 64 --models $MODELS 2>&1 | grep -v "kept in float32" \
    | tee $OUT/bench/motion-64.txt
else
  python -m trainer train configs/motion-self-forcing.yaml "$@" 2>&1 | grep -v "kept in float32" | tail -30
  cp runs/motion-self-forcing/metrics.jsonl $OUT/student-metrics.jsonl
  tar cf - -C checkpoints motion-student | split -b 15000000 - $OUT/motion-student.tar.
  timeout ${BENCH_SECONDS:-200} python -m bench video --compiled ${BENCH_ARGS:---clips 256 --long-clips 32} --out $OUT/bench 2>&1 | grep -v "kept in float32" | tail -25
  tar cf $OUT/bench.tar -C $OUT bench
fi
