#!/bin/bash
# usage: test15.sh NAME SUBJECTS METHODS [overrides...]  -- cohort B test subjects, the preset, seed 1, one thread
cd /work/main
name=$1; subj=$2; meth=$3; shift 3
export WANDB_MODE=offline OMP_NUM_THREADS=1
.venv/bin/tgrowth predict -c experiments/predict_cpu_volume.yaml data.root=/work/data/cohortB data.split=test \
  "data.subjects=$subj" "methods=$meth" method_maps=true seed=1 \
  checkpoints.denoiser=/work/runs/cpu/denoiser/denoiser.pt checkpoints.segmenter=/work/runs/cpu/segmenter/segmenter.pt \
  output_dir=/work/runs/cpu15/$name "$@" > /work/logs/$name.log 2>&1
