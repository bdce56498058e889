#!/bin/bash
# Does older code train the release student's first ITERATIONS steps to the same weights as today's?
#   old_code_probe.sh COMMIT ITERATIONS      (run from the repository root; threads 2, seed 0)
# Needs: runs/release_default (the run's data stage and student config). The old code runs in a git worktree that
# shares .venv and runs/; the config loses the keys that code does not know (grad_norm_interval).
set -e
COMMIT=$1; ITERS=$2; ROOT=$(pwd); WT=/tmp/clean_ros_old_$COMMIT
CFG=runs/release_default/stages/student_baseline/train/config.yaml
[ -d $WT ] || git worktree add -f $WT $COMMIT -q
ln -sfn $ROOT/.venv $WT/.venv; ln -sfn $ROOT/runs $WT/runs
grep -v "^grad_norm_interval" $CFG > /tmp/old_cfg_$COMMIT.yaml
train() {  # folder, config, output
  (cd $1 && .venv/bin/python training/train.py --config $2 --set max_iterations=$ITERS --set threads=2 --out $3 \
     --no-progress --no-tensorboard > $3.log 2>&1)
}
rm -rf /tmp/probe_old_$COMMIT /tmp/probe_today
train $WT /tmp/old_cfg_$COMMIT.yaml /tmp/probe_old_$COMMIT
train $ROOT $ROOT/$CFG /tmp/probe_today
.venv/bin/python - /tmp/probe_old_$COMMIT /tmp/probe_today <<'PY'
import glob, sys, torch
def weights(d):
    return torch.load(sorted(glob.glob(d + "/checkpoints/*.pt"))[-1], map_location="cpu", weights_only=True)["model"]
a, b = weights(sys.argv[1]), weights(sys.argv[2])
diff = [k for k in a if torch.is_tensor(a[k]) and not torch.equal(a[k], b[k])]
print(f"{sys.argv[1]} vs {sys.argv[2]}: {len(diff)} of {len(a)} tensors differ", diff[:4])
PY
