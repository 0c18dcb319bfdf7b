#!/bin/bash
# usage: val15.sh NAME [overrides...]  -- all 11 validation subjects of cohort A, the preset, seed 0, one thread
cd /work/main
name=$1; shift
export WANDB_MODE=offline OMP_NUM_THREADS=1
.venv/bin/tgrowth predict -c experiments/predict_cpu_volume.yaml data.root=/work/data/cohortA data.split=val \
  'methods=[tgrowth,no-change,fk]' plots=false method_maps=true seed=0 \
  checkpoints.denoiser=/work/runs/cpu/denoiser/denoiser.pt checkpoints.segmenter=/work/runs/cpu/segmenter/segmenter.pt \
  output_dir=/work/runs/cpu15/$name "$@" > /work/logs/$name.log 2>&1
