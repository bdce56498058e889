"""The distillation teacher voxelises the raw points itself (METHOD.md section 4, issue 13 item 1).

A student's pillars keep at most 16 points each, so a teacher fed points rebuilt from them sees a thinned cloud it
was never trained on. These tests prove that during distillation the teacher's input is exactly its own
voxelisation of the raw (augmented) points, as when it runs alone, through the real collator and TeacherRunner.
"""
from __future__ import annotations

import numpy as np
import torch

from clean_ros.models.detector import build_detector
from clean_ros.inference.voxelize import Voxels, voxelize_batch
from distill_helpers import real_teacher, small_cfg
from training.data.loader import Collator
from training.data.sample import Sample
from training.distill import DistillConfig, build_distillation
from training.distill.pointdistiller import match_voxels
from training.distill.teacher import TEACHER_VOXELS, teacher_voxelizer
from training.task import DetectionTask

from shared_helpers import read_velodyne


def _sample(points: np.ndarray) -> Sample:
    empty = np.zeros((0,), dtype=np.int64)
    return Sample("000000", points.astype(np.float32), np.zeros((0, 7), np.float32), empty, empty.astype(str), empty)


def _equal(a: Voxels, b: Voxels) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b))


def test_teacher_input_is_its_own_voxelisation_of_the_raw_points(kitti_sample):
    points = read_velodyne(kitti_sample / "training" / "velodyne" / "000000.bin")
    teacher = real_teacher("second_tiny").eval()
    student_cfg = small_cfg()
    parts = build_distillation(DistillConfig(method="clean"), teacher, build_detector(student_cfg))
    task = DetectionTask(student_cfg, build_detector(student_cfg), parts.loss_terms, parts.target_hooks,
                         extra_voxelizers=parts.voxelizers)
    batch = Collator.from_config(student_cfg, training=True, extra=task.extra_voxelizers)([_sample(points)])

    alone, _ = teacher_voxelizer(teacher.rpn.cfg).batch([torch.from_numpy(points)])
    assert _equal(batch.extra_voxels[TEACHER_VOXELS], alone)
    assert teacher_voxelizer(teacher.rpn.cfg).max_voxels == teacher.rpn.cfg.max_voxels_test  # eval-mode cap

    # The old path (the student's capped pillars voxelised again) loses points the teacher sees alone.
    s = batch.voxels
    kept = torch.arange(s.features.shape[1]).unsqueeze(0) < s.num_points.unsqueeze(1)
    c = teacher.rpn.cfg
    rebuilt, _ = voxelize_batch([s.features[kept]], c.point_cloud_range, c.voxel_size, c.max_points_per_voxel,
                                c.max_voxels_test)
    assert int(rebuilt.num_points.sum()) < int(alone.num_points.sum())

    # What the runner gives the loss terms is the teacher's output on exactly that input.
    rpn = parts.runner.dense_output(batch)
    with torch.no_grad():
        reference = teacher.rpn(alone, 1)
    assert torch.equal(rpn.cls_logits, reference.cls_logits)
    assert torch.equal(rpn.box_preds, reference.box_preds)
    final = parts.runner.final_detections(batch)[0]
    with torch.no_grad():
        expected = teacher.predict(alone, 1)[0]
    np.testing.assert_array_equal(final.boxes.numpy(), np.asarray(expected.boxes, dtype=np.float32).reshape(-1, 7))


def test_a_batch_without_teacher_voxels_is_refused_with_a_clear_error():
    import pytest

    cfg = small_cfg()
    parts = build_distillation(DistillConfig(method="label_assign"), real_teacher(), build_detector(cfg))
    clouds = [torch.rand(500, 4) * torch.tensor([25.0, 20.0, 3.0, 1.0]) - torch.tensor([0.0, 10.0, 2.0, 0.0])]
    batch = Collator.from_config(cfg, training=True)([_sample(clouds[0].numpy())])  # no extra voxelizers
    with pytest.raises(RuntimeError, match="no teacher voxels"):
        parts.runner.dense_output(batch)


def test_match_voxels_pairs_cells_in_any_order_and_marks_missing_ones():
    coords = torch.tensor([[0, 0, 1, 2], [0, 0, 3, 4], [1, 0, 1, 2], [1, 0, 5, 5]], dtype=torch.int32)
    student = Voxels(torch.zeros(4, 2, 4), torch.ones(4, dtype=torch.int32), coords)
    order = torch.tensor([2, 0, 3])  # the teacher lacks [0, 0, 3, 4] and stores the rest shuffled
    extra = torch.tensor([[0, 0, 9, 9]], dtype=torch.int32)
    teacher_coords = torch.cat([coords[order], extra])
    teacher = Voxels(torch.zeros(4, 2, 4), torch.ones(4, dtype=torch.int32), teacher_coords)
    assert match_voxels(student, teacher).tolist() == [1, -1, 0, 2]
    empty = Voxels(torch.zeros(0, 2, 4), torch.zeros(0, dtype=torch.int32), torch.zeros(0, 4, dtype=torch.int32))
    assert match_voxels(student, empty).tolist() == [-1, -1, -1, -1]
