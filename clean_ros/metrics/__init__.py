"""How well and how fast: the KITTI AP evaluator (kitti_eval, shared with training/) and latency statistics
(latency: percentiles, rolling stage timings, gap counters, latency_summary)."""
