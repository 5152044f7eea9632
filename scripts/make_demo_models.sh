#!/usr/bin/env bash
# Make the demo models avdit ships, with avdit's own commands only:
#   avdit_cli/assets/tiny-dit/             the tiny preset's frozen image backbone (frames only, never audio),
#                                          conditioned on the colour class of the balls in view
#   avdit_cli/assets/demo-avdit/           AV-DiT adapters over it, joint block on   (avdit demo --pretrained)
#   avdit_cli/assets/demo-avdit-no-joint/  the same recipe and budget, joint block off (... --no-joint)
#
# Usage: bash scripts/make_demo_models.sh WORKDIR      (from the repository root, with avdit installed)
# Time on a 2-core CPU (2026-11-29/30, shared with other jobs): unconditional backbone 2 h, its class-conditional
# continuation 32 + 4 min, the two adapter runs about 35 and 25 min side by side.
# Each job runs on one thread: on 2 cores, two 1-thread jobs finish far sooner than two 2-thread ones.
set -euo pipefail
work=${1:?give a work folder}
mkdir -p "$work"
export AVDIT_RUNS="$work/runs" OMP_NUM_THREADS=1
assets=avdit_cli/assets

# 1. Data: 256 synthetic files of 6.4 s (seed 1000, disjoint from the demo's seed-0 data) -> 1024 clips, each
#    file in a folder named by its balls' colours (red+blue/...), which preprocess reads as the clip's class.
avdit demo --data-only --clips 256 --seconds 6.4 --seed 1000 -o "$work/data1000"
avdit preprocess "$work/data1000/data" -o "$work/cache" -p tiny --set data.class_folders=true

# 2. The image backbone: every DiT weight trained on single frames (pretrain mode: one timestep per frame).
#    a. Unconditional: 24000 steps of 8 clips x 16 frames, lr 1e-3, EMA 0.999 (the labels are not used). The
#       shipped one was made so from the same clips cached without classes (another clip order).
avdit finetune -p tiny --pretrain --cache "$work/cache" --name bb64 --set data.class_folders=true \
  --set train.steps=24000 --set train.warmup_steps=500 --set train.ema_decay=0.999 \
  --set train.checkpoint_every=2000 --set train.log_every=100
#    b. Class-conditional, as DiT-XL/2 is on ImageNet's classes: a's weights with a class table grown to the 21
#       colour classes (each new row starts at the null row), 8000 more steps on frames labelled with their
#       clip's class (10 % dropped to the null class), Min-SNR-gamma 5 (it weighs the noise levels where the
#       class decides the colours; without it the classes took about twice the steps).
classes=(--set data.class_folders=true --set model.class_conditional=true --set model.num_classes=21)
avdit finetune -p tiny --pretrain --cache "$work/cache" --name bbcls "${classes[@]}" \
  --set "train.init_from=$work/runs/bb64/backbone" --set train.steps=8000 --set train.lr=1e-3 \
  --set train.warmup_steps=200 --set train.ema_decay=0.999 --set diffusion.min_snr_gamma=5 \
  --set train.checkpoint_every=1000 --set train.log_every=100
#    c. 1000 steps more with the plain loss (lr 3e-4, EMA with warmup). Min-SNR gives t = 0 a weight of about
#       5e-4, and with nothing to hold it the mean square of the last block's output at t = 0 grew 500-fold
#       (0.5 -> 262). The adapters feed given frames at t = 0, and through such a stream the joint block could
#       not tell one clip's frames from another's. The plain loss weighs t = 0 like any t.
avdit finetune -p tiny --pretrain --cache "$work/cache" --name bbfix "${classes[@]}" \
  --set "train.init_from=$work/runs/bbcls/backbone" --set train.steps=1000 --set train.lr=3e-4 \
  --set train.warmup_steps=100 --set train.ema_decay=0.999 --set train.ema_warmup=true \
  --set train.checkpoint_every=500 --set train.log_every=100
cp "$work/runs/bbfix/backbone/config.json" "$work/runs/bbfix/backbone/diffusion_pytorch_model.safetensors" \
  "$work/runs/bbfix/backbone/class_names.json" "$assets/tiny-dit/"

# 3. The adapters (backbone frozen), joint block on and off, side by side, same recipe and budget. Half the
#    clips have their frames given clean (the sound learns to follow frames it can see); the joint block attends
#    across modalities only (it cannot serve as more audio self-attention) with ALiBi's fixed time slopes.
#    Each clip's class goes to the frozen backbone's class table, as in step 2b.
recipe=(-p tiny --cache "$work/cache" --set "model.backbone_path=$PWD/$assets/tiny-dit" "${classes[@]}"
  --set model.lora_rank=8 --set model.joint_lora_rank=8
  --set diffusion.min_snr_gamma=5 --set diffusion.independent_timesteps=true --set diffusion.given_video_prob=0.5
  --set model.joint_cross_only=true --set model.joint_time_bias_learned=false
  --set train.steps=3500 --set train.lr=1e-3 --set train.lr_schedule=cosine --set train.warmup_steps=100
  --set train.ema_decay=0.999 --set train.checkpoint_every=500 --set train.log_every=50 --set train.seed=0
  --set sample.clip_denoised=true)
avdit finetune "${recipe[@]}" --name final_joint > "$work/final_joint.log" 2>&1 &
avdit finetune "${recipe[@]}" --set model.joint=false --name final_nojoint > "$work/final_nojoint.log" 2>&1 &
wait

# 4. Ship the EMA adapters only, with the backbone referenced by a path relative to the model folder, and the
#    sampling defaults: each clip's class drawn from the data's, guided towards it (scale 2); the frames first,
#    from alike noise per frame, then the sound for them.
sampling=(--set sample.order=video-first --set sample.video_noise_correlation=0.3 --set sample.cfg_scale=2)
avdit export "$work/runs/final_joint" -o "$assets/demo-avdit" --backbone "$assets/tiny-dit" "${sampling[@]}"
avdit export "$work/runs/final_nojoint" -o "$assets/demo-avdit-no-joint" --backbone "$assets/tiny-dit" "${sampling[@]}"
