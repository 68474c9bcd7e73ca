#!/usr/bin/env bash
# Train, export and evaluate the default models in weights/ (see weights/README.md for what each
# run reached and how long it took). Every stage resumes: run the script again after an interruption
# and each run continues from its last checkpoint (a finished run is only exported again).
#
#   bash scripts/train_default_models.sh            # CPU: ~8 hours on 2 cores
#
# On a CUDA machine the same configs train in mixed precision; raise train.steps and batch_size in
# scripts/train_configs/*.yaml for better models.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

run() {   # run STAGE NAME [extra train args]: train (or resume) runs/NAME from its config
  local stage=$1 name=$2; shift 2
  if [ -f "runs/$name/checkpoints/last.pt" ]; then
    python -m core.train "$stage" --config "scripts/train_configs/$name.yaml" --resume "$@"
  else
    python -m core.train "$stage" --config "scripts/train_configs/$name.yaml" "$@"
  fi
}

# 1. The shared first stage: KL-f4 autoencoder (64x64x3 <-> 16x16x4).
run autoencoder shapes-kl-f4
python -m core.train export runs/shapes-kl-f4 --out weights/shapes-kl-f4.safetensors

# 2. One thread each, side by side: the text-to-image LDM on that first stage, and the first stage's
#    decoder fine-tuned with its encoder frozen (the latent space does not move), then the 4x
#    super-resolution LDM on the fine-tuned first stage.
OMP_NUM_THREADS=1 run ldm shapes-txt2img &
( OMP_NUM_THREADS=1 run autoencoder shapes-kl-f4-decoder &&
  python -m core.train export runs/shapes-kl-f4-decoder --out weights/shapes-kl-f4.safetensors &&
  OMP_NUM_THREADS=1 run ldm shapes-sr4x ) &
wait
python -m core.train export runs/shapes-txt2img --out weights/shapes-txt2img.safetensors --first-stage runs/shapes-kl-f4-decoder
python -m core.train export runs/shapes-sr4x --out weights/shapes-sr4x.safetensors

# 3. Continue the text-to-image model twice from its own export (warm restarts with new data seeds).
#    (The dedicated inpainting model, shapes-inpaint.yaml, was fine-tuned from the first round's
#    export beside the second round; latent blending with the final text model measured better, so
#    it is not shipped: weights/README.md.)
OMP_NUM_THREADS=1 run ldm shapes-txt2img-continue
python -m core.train export runs/shapes-txt2img-continue --out weights/shapes-txt2img.safetensors
OMP_NUM_THREADS=1 run ldm shapes-txt2img-continue2
python -m core.train export runs/shapes-txt2img-continue2 --out weights/shapes-txt2img.safetensors

# 4. Side by side: a third round of the text model, and two more decoder fine-tunes on the same frozen
#    encoder: one weighted towards outlines (the shared first stage and the text model's decoder), then
#    one on photo crops (the super-resolution model's decoder only).
OMP_NUM_THREADS=1 run ldm shapes-txt2img-continue3 &
( OMP_NUM_THREADS=1 run autoencoder shapes-kl-f4-decoder-edges &&
  OMP_NUM_THREADS=1 run autoencoder shapes-kl-f4-decoder-photos ) &
wait
python -m core.train export runs/shapes-kl-f4-decoder-edges --out weights/shapes-kl-f4.safetensors
python -m core.train export runs/shapes-txt2img-continue3 --out weights/shapes-txt2img.safetensors \
  --first-stage runs/shapes-kl-f4-decoder-edges
python -m core.train export weights/shapes-sr4x.safetensors --out weights/shapes-sr4x.safetensors \
  --first-stage runs/shapes-kl-f4-decoder-photos

# 5. A fourth decoder pass (outlines weighed 9x, the encoder still frozen), then two more rounds of the
#    text model, each from the export before it; the last export takes the new decoder.
run autoencoder shapes-kl-f4-decoder-edges2
python -m core.train export runs/shapes-kl-f4-decoder-edges2 --out weights/shapes-kl-f4.safetensors
run ldm shapes-txt2img-continue4
python -m core.train export runs/shapes-txt2img-continue4 --out weights/shapes-txt2img.safetensors
run ldm shapes-txt2img-continue5
python -m core.train export runs/shapes-txt2img-continue5 --out weights/shapes-txt2img.safetensors \
  --first-stage runs/shapes-kl-f4-decoder-edges2
# (rounds 6 and 7, tried from this export, and 9, from round 8's, were not shipped: weights/README.md)
# 6. An eighth round from round 5's export (two-object scenes half the time, half the learning rate);
#    its export samples with DPM++ 2M Karras, 30 steps, by default (the config's export.defaults).
run ldm shapes-txt2img-continue8
python -m core.train export runs/shapes-txt2img-continue8 --out weights/shapes-txt2img.safetensors

# 7. Evaluation (JSON next to the weights' README figures).
mkdir -p weights/eval
python -m core.eval autoencoder --model weights/shapes-kl-f4.safetensors --n 64 --out weights/eval/autoencoder.json
python -m core.eval shapes --model weights/shapes-txt2img.safetensors --n 200 --objects 1 --out weights/eval/txt2img-1obj.json
python -m core.eval shapes --model weights/shapes-txt2img.safetensors --n 200 --objects 2 --out weights/eval/txt2img-2obj.json
for seed in 1 2; do      # two more sets of captions, to check the defaults chosen on seed 0's
  for n in 1 2; do
    python -m core.eval shapes --model weights/shapes-txt2img.safetensors --n 200 --objects $n --seed $seed \
      --out weights/eval/txt2img-${n}obj-seed$seed.json
  done
done
python -m core.eval inpaint --model weights/shapes-txt2img.safetensors --n 64 --out weights/eval/inpaint-blend.json
# session 13: the SR model denoises under bf16 autocast on CPUs with native bf16 (its file says so; the
# tensors are unchanged; 1.8x faster, PSNR within 0.01 dB: bench/README.md), then evaluated again
python -m core.train export weights/shapes-sr4x.safetensors --out weights/shapes-sr4x.safetensors \
  --defaults '{"cpu_bf16": true}'
python -m core.eval sr --model weights/shapes-sr4x.safetensors --max-side 128 --n-shapes 8 --out weights/eval/sr4x.json

# sessions 12-13: the layout-to-image model's round one, from the text model's UNet (4000 steps),
# evaluated on 200 layouts of each kind with two eval seeds (0, and 1 written to layout-round1-*-seed1.json)
OMP_NUM_THREADS=1 python -m core.train ldm --config scripts/train_configs/shapes-layout.yaml   # or: --resume --name shapes-layout
python -m core.train export runs/shapes-layout --out weights/shapes-layout.safetensors
for n in 1 2; do
  python -m core.eval layout --model weights/shapes-layout.safetensors --n 200 --objects $n \
    --out weights/eval/layout-round1-${n}obj.json
  python -m core.eval layout --model weights/shapes-layout.safetensors --n 200 --objects $n --seed 1 \
    --out weights/eval/layout-round1-${n}obj-seed1.json
done

# session 14: tried on the layout model, none shipped (weights/README.md, "Session 14", has the figures):
# more of round one, uniform loss weighting, attention at 16x16 latents, a decoder pass for these scenes,
# offset noise. Each run starts from the shipped weights or from round two's run folder:
#   OMP_NUM_THREADS=1 python -m core.train ldm --config scripts/train_configs/shapes-layout-continue.yaml
#   OMP_NUM_THREADS=1 python -m core.train ldm --config scripts/train_configs/shapes-layout-continue2.yaml
#   OMP_NUM_THREADS=1 python -m core.train ldm --config scripts/train_configs/shapes-layout-attn16.yaml
#   OMP_NUM_THREADS=1 python -m core.train autoencoder --config scripts/train_configs/shapes-kl-f4-decoder-layout.yaml
#   OMP_NUM_THREADS=2 python -m core.train ldm --config scripts/train_configs/shapes-layout-offset.yaml

# session 15: the shipped layout model. The background became a layout token (27 classes: 24 objects +
# white, black, gray; sample_layout draws one from the seed when the user leaves it on "any"), trained
# 2500 steps from the round-one weights; a second decoder pass for these scenes with every outline
# weighing the same (edge_gain 4; the encoder frozen, so the UNet's latents are unchanged) goes in with
# it; guidance 4 (export block). A second round (shapes-layout-bg2.yaml) was worse and is not shipped.
# Session 16: the export block samples with DPM++ 2M SDE Karras 30 (same tensors; session 15's file was
# DPM++ 2M Karras 30); the file was rewritten in place of a retraining with
#   python -m core.train export weights/shapes-layout.safetensors --out NEW --defaults '{"sampler": "dpmpp_2m_sde"}'
python -m core.train autoencoder --config scripts/train_configs/shapes-kl-f4-decoder-layout.yaml    # session 14's pass
python -m core.train autoencoder --config scripts/train_configs/shapes-kl-f4-decoder-layout2.yaml
python -m core.train ldm --config scripts/train_configs/shapes-layout-bg.yaml
python -m core.train export runs/shapes-layout-bg --out weights/shapes-layout.safetensors \
  --first-stage runs/shapes-kl-f4-decoder-layout2
for n in 1 2; do
  python -m core.eval layout --model weights/shapes-layout.safetensors --n 200 --objects $n \
    --out weights/eval/layout-${n}obj.json
  python -m core.eval layout --model weights/shapes-layout.safetensors --n 200 --objects $n --seed 1 \
    --out weights/eval/layout-${n}obj-seed1.json
done
