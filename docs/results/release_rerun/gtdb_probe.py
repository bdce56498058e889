"""Build the release run's GT database with this tree's code; compare with the stored one.

    python gtdb_probe.py CONFIG STORED_NPZ   (from the root of the tree whose code is tested; CONFIG: the run's
    student config, less the keys that code does not know)
"""
import sys, numpy as np, yaml
sys.path.insert(0, ".")
from training.train_config import TrainConfig
from clean_ros.yaml_config import load_config
from training.data.kitti_dataset import KittiDataset
from training.data.gt_database import build_gt_database
from pathlib import Path
cfg = load_config(TrainConfig, Path(sys.argv[1]), [])
db = build_gt_database(KittiDataset(cfg.data, cfg.data.train_split, training=False))
ref = np.load(sys.argv[2])
for name in ("points", "offsets", "boxes", "names", "difficulty", "num_points", "frame_ids"):
    a, b = getattr(db, name), ref[name]
    print(name, a.shape, b.shape, "equal" if a.shape == b.shape and np.array_equal(a, b) else "DIFFERENT")
