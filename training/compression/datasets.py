"""Every dataset a compression run reads, built in one place from the run's data section.

    split(name)                 a split as stored (frame counts, the efficiency frame)
    split(name, model_cfg)      a split with the model's classes, range and point features (importance scoring on
                                TRAIN frames, evaluation on data.eval_split)
    train_set(train_cfg)        a training stage's frames: augmentation, with the GT database built on first use
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from clean_ros.models.detector_config import DetectorConfig
from clean_ros.yaml_config import ConfigError
from training.compression.compress_config import DataSection


class DatasetBuilder:
    def __init__(self, section: DataSection, root: Path, log: Callable[[str], None]):
        self.section = section
        self.root = Path(root)  # the dataset root: the data stage's simulated dataset or data.root
        self.log = log

    def data_config(self, model_cfg: DetectorConfig | None = None, fov_crop: bool = True):
        """The DataConfig of the run's dataset; with model_cfg, its classes, range and point features."""
        from training.data.data_config import DataConfig, camera_crop_for

        d = self.section
        if model_cfg is not None:
            fov_crop = fov_crop and camera_crop_for(model_cfg.point_cloud_range)
        model = {} if model_cfg is None else {
            "class_names": tuple(model_cfg.class_names), "point_cloud_range": tuple(model_cfg.point_cloud_range),
            "num_point_features": model_cfg.num_point_features}
        return DataConfig(root=str(self.root), train_split=d.train_split, val_split=d.val_split, fov_crop=fov_crop,
                          **model)

    def split(self, name: str, model_cfg: DetectorConfig | None = None, fov_crop: bool = True):
        """The frames of split `name`, unaugmented."""
        from training.data.kitti_dataset import KittiDataset

        return KittiDataset(self.data_config(model_cfg, fov_crop), name, training=False)

    def train_set(self, train_cfg, ctx=None):
        """A training stage's TRAIN frames with its augmentation; builds the GT database it samples from if missing
        (train_cfg.augment.gt_sampling_config.database_path: next to the data stage's outputs). Under torchrun
        (ctx: training.distributed.DistContext) rank 0 builds it while the other ranks wait."""
        from training.data.augment import Augmentor
        from training.data.gt_database import GTDatabaseError, build_gt_database
        from training.data.kitti_dataset import KittiDataset

        gt_db = Path(train_cfg.augment.gt_sampling_config.database_path)
        try:
            main = ctx is None or ctx.is_main
            if main and train_cfg.augment.gt_sampling and not gt_db.is_file():
                self.log(f"    building GT database {gt_db.name} from split {train_cfg.data.train_split!r}")
                build_gt_database(KittiDataset(train_cfg.data, train_cfg.data.train_split, training=False), gt_db)
            if ctx is not None:
                ctx.barrier()
            augmentor = Augmentor(train_cfg.augment, tuple(train_cfg.model.class_names))
        except GTDatabaseError as exc:
            raise ConfigError(str(exc)) from None
        return KittiDataset(train_cfg.data, train_cfg.data.train_split, training=True, augmentor=augmentor,
                            seed=train_cfg.seed)

    def first_scan(self, name: str) -> Path:
        """The first frame's LiDAR scan of split `name` (the efficiency frame by default)."""
        dataset = self.split(name)
        return dataset.split_dir / "velodyne" / f"{dataset.frame_ids[0]}.bin"


__all__ = ["DatasetBuilder"]
