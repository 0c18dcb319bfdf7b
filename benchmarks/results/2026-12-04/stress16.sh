#!/bin/bash
# prereg16 third step: the stress cohorts' first 12 subjects, fk-to-truth rows (baseline-only), from the worktree /work/run16b
cd /work/run16b
export WANDB_MODE=offline OMP_NUM_THREADS=1 PYTHONPATH=/work/run16b
PY=/work/main/.venv/bin/python
S='[STR-00001,STR-00002,STR-00003,STR-00004,STR-00005,STR-00006,STR-00007,STR-00008,STR-00009,STR-00010,STR-00011,STR-00012]'
one() {
  $PY -m tgrowth synth -c experiments/stress/$1.yaml n_subjects=12 output_dir=/work/data/stress_$1 threads=1 > /work/logs/synth_$1.log 2>&1
  $PY -m tgrowth predict -c experiments/predict_cpu_fk.yaml data.root=/work/data/stress_$1 data.split=test "data.subjects=$S" \
    'methods=[fk-to-truth,fk,no-change,grow-to-truth]' seed=0 num_threads=1 wandb.enabled=false \
    checkpoints.denoiser=/work/runs/cpu/denoiser/denoiser.pt checkpoints.segmenter=/work/runs/cpu/segmenter/segmenter.pt \
    output_dir=/work/runs/cpu16/stressF_$1 > /work/logs/stressF_$1.log 2>&1
}
(one control; one aniso) &
(one gwratio; one mass) &
wait
