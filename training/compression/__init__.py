"""The CLEAN compression pipeline behind `python training/compress.py` (issue 6). See docs/COMPRESS.md.

Named `compression`, not `pipeline` (clean_ros.inference.pipeline.Pipeline is the runtime's inference pipeline)
nor `compress` (it would shadow the training/compress.py script).

  compress_config.py  CompressConfig: every knob of one run (YAML + --set, clean_ros.yaml_config)
  graph.py            CompressionGraph: the stages of a config, in order, with their hashed config and
                      dependencies; model_refs() = the reported models and the stages storing them
  stage_store.py      StageStore: resumable stage folders, done-markers keyed by a config hash, progress / ETA
  run_context.py      CompressRun: what every stage body reads (config, folders, device, log, datasets)
  train_configs.py    a training stage's TrainConfig from the model YAML, the shared section and the `set` lists
  datasets.py         DatasetBuilder: every dataset a run reads (train set with augmentation + GT database,
                      importance frames, evaluation split, efficiency frame)
  training_run.py     fit / train_student: the Trainer in-process, resumable, with the stage's KD parts
  stored_models.py    model I/O of a stage folder (model.pt / model.yaml / model.json), ModelRef, IoU gate
  stage_data.py       stage bodies: data
  stage_teacher.py                  teacher
  stage_students.py                 student_baseline, student_cakd, finetune, iou_refine, baseline_<name>
  stage_pruning.py                  importance, prune
  stage_outputs.py                  evaluate, efficiency, export, report
  stage_thresholds.py               thresholds (export.score_thresholds: calibrate: per-class score thresholds on val)
  report_rows.py      what the report reads back (model rows, per-epoch diagnostics); training/report.py and the
                      stage bodies both import it, neither imports the other's importer
  plots.py            the report's PNG figures (matplotlib Agg)
"""
