#!/bin/bash
# prereg16 second step: fk-to-truth rows (baseline-only), 2D seeds 0/1 and 3D odd/even, from the worktree /work/run16b
cd /work/run16b
export WANDB_MODE=offline OMP_NUM_THREADS=1 PYTHONPATH=/work/run16b
ck="checkpoints.denoiser=/work/runs/cpu/denoiser/denoiser.pt checkpoints.segmenter=/work/runs/cpu/segmenter/segmenter.pt num_threads=1"
M='methods=[fk-to-truth,fk,no-change]'
run2d() { /work/main/.venv/bin/python -m tgrowth predict -c experiments/predict_cpu_fk.yaml data.root=/work/data/cohortB \
  data.split=test seed=$1 $ck "$M" method_maps=true output_dir=/work/runs/cpu16/test2d_fkt_s$1 > /work/logs/test2d_fkt_s$1.log 2>&1; }
run3d() { /work/main/.venv/bin/python -m tgrowth predict -c experiments/predict_cpu_volume.yaml data.root=/work/data/cohortB \
  data.split=test "data.subjects=$2" seed=1 $ck "$M" method_maps=true output_dir=/work/runs/cpu16/test3d_fkt_$1 > /work/logs/test3d_fkt_$1.log 2>&1; }
ODD='[TST-00001,TST-00003,TST-00005,TST-00007,TST-00009,TST-00011]'
EVEN='[TST-00002,TST-00004,TST-00006,TST-00008,TST-00010,TST-00012]'
(run2d 0; run3d a "$ODD") &
(run2d 1; run3d b "$EVEN") &
wait
