"""The house rule: training/ imports clean_ros/, never the reverse (the vehicle install has no training/)."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_runtime_wing_never_imports_the_training_wing():
    offenders = {str(path.relative_to(ROOT)): sorted(m for m in _imported_modules(path)
                                                     if m == "training" or m.startswith("training."))
                 for path in sorted((ROOT / "clean_ros").rglob("*.py"))}
    assert not {k: v for k, v in offenders.items() if v}


def test_training_kitti_eval_is_the_runtime_evaluator():
    import clean_ros.kitti_eval as runtime
    import training.kitti_eval as offline

    for name in runtime.__all__:
        assert getattr(offline, name) is getattr(runtime, name), name
