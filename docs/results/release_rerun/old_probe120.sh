#!/bin/bash
# 120 iterations (past the grad-norm interval of 100 and 6 log steps), eecba03 vs today, threads 2, seed 0
cd /work/wt_old; rm -rf /work/tmp_p120_old
.venv/bin/python training/train.py --config /work/notes18/old_cfg.yaml --set max_iterations=120 --set threads=2 --out /work/tmp_p120_old --no-progress --no-tensorboard > /work/tmp_p120_old.log 2>&1; echo "old rc $? $(date +%T)"
cd /work/main; rm -rf /work/tmp_p120_new
.venv/bin/python training/train.py --config runs/release_default/stages/student_baseline/train/config.yaml --set max_iterations=120 --set threads=2 --out /work/tmp_p120_new --no-progress --no-tensorboard > /work/tmp_p120_new.log 2>&1; echo "new rc $? $(date +%T)"
.venv/bin/python - <<'PY'
import torch, glob
def w(d):
    return torch.load(sorted(glob.glob(d + "/checkpoints/*.pt"))[-1], map_location="cpu", weights_only=True)["model"]
a, b = w("/work/tmp_p120_old"), w("/work/tmp_p120_new")
diff = [k for k in a if torch.is_tensor(a[k]) and not torch.equal(a[k], b[k])]
print(f"120 iterations, eecba03 vs today: {len(diff)} of {len(a)} tensors differ", diff[:3])
PY
