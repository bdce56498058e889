#!/bin/bash
# int8 vs float on the release data (val, holdout), the six real frames and the emulated sensor; one thread each
cd "$(dirname "$0")/../../.."  # the repository root; the release data: python training/compress.py --config config/compress/release.yaml (its data stage)
D=runs/release_default/stages/data/dataset
O=${1:-/tmp/int8_eval}
mkdir -p $O
export OMP_NUM_THREADS=1
for split in val holdout; do
  for mode in fp32 int8; do
    flag=""; [ $mode = int8 ] && flag="--int8"
    .venv/bin/python training/real_check.py $D --split $split --bundle models/default --threads 1 --quiet $flag --out $O/${split}_$mode.json > $O/${split}_$mode.txt 2>&1
  done
done
for mode in fp32 int8; do
  flag=""; [ $mode = int8 ] && flag="--int8"
  .venv/bin/python training/real_check.py ../shared/data/kitti_sample/training --bundle models/default --threads 1 $flag --list-false-positives --out $O/real_$mode.json > $O/real_$mode.txt 2>&1
  .venv/bin/python training/real_check.py ../shared/data/kitti_sample/training --bundle models/default --threads 1 $flag --emulate-sensor height=0.4,pitch=0.03,beams=32,intensity=0.7 --sensor-height 2.13 --sensor-pitch 0.03 --out $O/emul_$mode.json > $O/emul_$mode.txt 2>&1
done
echo done
