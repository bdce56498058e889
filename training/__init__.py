"""clean_ros offline wing: data, training, distillation, pruning, evaluation, export."""
