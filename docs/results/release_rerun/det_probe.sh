#!/bin/bash
# Is the release student's training deterministic? Two 20-iteration runs per thread count, same seed; compare weights.
# run from the repository root (needs runs/release_default)
CFG=runs/release_default/stages/student_baseline/train/config.yaml
for th in 2 1; do
  for r in a b; do
    rm -rf /tmp/clean_ros_probe_${th}_$r
    .venv/bin/python training/train.py --config $CFG --set max_iterations=20 --set threads=$th --out /tmp/clean_ros_probe_${th}_$r --no-progress --no-tensorboard > /tmp/clean_ros_probe_${th}_$r.log 2>&1
    echo "threads $th run $r rc $? $(date +%T)"
  done
done
.venv/bin/python - <<'PY'
import torch, glob
def w(d):
    ck = torch.load(sorted(glob.glob(d + "/checkpoints/*.pt"))[-1], map_location="cpu", weights_only=True)
    return ck["model"] if "model" in ck else ck
for th in (2, 1):
    a, b = w(f"/tmp/clean_ros_probe_{th}_a"), w(f"/tmp/clean_ros_probe_{th}_b")
    diff = [k for k in a if torch.is_tensor(a[k]) and not torch.equal(a[k], b[k])]
    print(f"threads {th}: {len(diff)} of {len(a)} tensors differ", diff[:3])
PY
