#!/bin/bash
# 20 iterations (threads 2, seed 0) with the code of 8a73f69 (2026-12-06 01:41, where the shipped student's run started)
cd /work/wt_old
rm -rf /work/tmp_probe_8a7
.venv/bin/python training/train.py --config /work/notes18/old_cfg.yaml --set max_iterations=20 --set threads=2 --out /work/tmp_probe_8a7 --no-progress --no-tensorboard > /work/tmp_probe_8a7.log 2>&1
echo "8a73f69 rc $? $(date +%T)"
cd /work/main
.venv/bin/python - <<'PY'
import torch, glob
def w(d):
    return torch.load(sorted(glob.glob(d + "/checkpoints/*.pt"))[-1], map_location="cpu", weights_only=True)["model"]
a, b = w("/work/tmp_probe_8a7"), w("/work/tmp_probe_2_a")
diff = [k for k in a if torch.is_tensor(a[k]) and not torch.equal(a[k], b[k])]
print(f"20 iterations, 8a73f69 vs today: {len(diff)} of {len(a)} tensors differ", diff[:4])
if diff:
    k = diff[0]; print(k, "max abs diff", float((a[k].float() - b[k].float()).abs().max()))
PY
