"""Point clouds and boxes, no ROS and no model: PointCloud2 decoding and the input contract (pointcloud), PCD files
(pcd), the KITTI label / calibration format (kitti) and box geometry: IoU, NMS, box coding (geometry)."""
