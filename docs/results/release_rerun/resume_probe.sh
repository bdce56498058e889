#!/bin/bash
# Is a resume exact at the release student's config? 20 frames (10 iterations / epoch), 2 epochs, stopped after STOP
# iterations (default 10: the epoch boundary; 14: in the middle of the second epoch) and resumed.
#   resume_probe.sh [STOP]      (run from the repository root; needs runs/release_default)
STOP=${1:-10}
CFG=runs/release_default/stages/student_baseline/train/config.yaml
# a dataset of the run's first 20 training frames: its training/ folder linked, a 20-line train listing
mkdir -p /tmp/clean_ros_probe_ds/ImageSets
ln -sfn "$(pwd)/runs/release_default/stages/data/dataset/training" /tmp/clean_ros_probe_ds/training
head -20 runs/release_default/stages/data/dataset/ImageSets/train.txt > /tmp/clean_ros_probe_ds/ImageSets/train.txt
COMMON="--config $CFG --set data.root=/tmp/clean_ros_probe_ds --set epochs=2 --set threads=2 --no-progress --no-tensorboard"
rm -rf /tmp/clean_ros_res_a /tmp/clean_ros_res_b
.venv/bin/python training/train.py $COMMON --out /tmp/clean_ros_res_a > /tmp/clean_ros_res_a.log 2>&1; echo "a rc $?"
.venv/bin/python training/train.py $COMMON --set max_iterations=$STOP --out /tmp/clean_ros_res_b > /tmp/clean_ros_res_b.log 2>&1; echo "b1 rc $?"
.venv/bin/python training/train.py --resume /tmp/clean_ros_res_b --set max_iterations=0 --no-progress --no-tensorboard > /tmp/clean_ros_res_b2.log 2>&1; echo "b2 rc $?"
.venv/bin/python - $STOP <<'PY'
import sys, torch
def w(d):
    ck = torch.load(d + "/checkpoints/last.pt", map_location="cpu", weights_only=True)
    return ck["model"], ck.get("epoch"), ck.get("iteration")
a, ea, ia = w("/tmp/clean_ros_res_a"); b, eb, ib = w("/tmp/clean_ros_res_b")
stop = int(sys.argv[1])
diff = [k for k in a if torch.is_tensor(a[k]) and not torch.equal(a[k], b[k])]
print(f"uninterrupted (epoch {ea}) vs stopped after {stop} iterations and resumed (epoch {eb}): {len(diff)} of {len(a)} tensors differ", diff[:3])
PY
