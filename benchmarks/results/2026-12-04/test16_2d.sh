#!/bin/bash
# usage: test16_2d.sh SEED [overrides...] -- the 2D preset on cohort B's test subjects, from the worktree /work/run16
seed=$1; shift
cd /work/run16
export WANDB_MODE=offline OMP_NUM_THREADS=1 PYTHONPATH=/work/run16
/work/main/.venv/bin/python -m tgrowth predict -c experiments/predict_cpu_fk.yaml data.root=/work/data/cohortB data.split=test \
  seed=$seed checkpoints.denoiser=/work/runs/cpu/denoiser/denoiser.pt checkpoints.segmenter=/work/runs/cpu/segmenter/segmenter.pt \
  num_threads=1 output_dir=/work/runs/cpu16/test2d_s$seed "$@" > /work/logs/test2d_s$seed.log 2>&1
