"""The CLEAN compression pipeline behind `python training/compress.py` (issue 6). See docs/COMPRESS.md.

config.py   CompressConfig: every knob of one compression run (loaded with clean_ros.config)
stages.py   StageStore: resumable stage folders, done-markers keyed by a config hash, progress header / ETA
steps.py    the stages themselves (data, teacher, students, importance, prune, fine-tune, IoU refinement, ...)
plots.py    the report's PNG figures (matplotlib Agg)
"""
