"""The CLEAN compression pipeline entry point (issue 6): not built yet.

Teacher -> CaKD + label-assignment distilled student -> masked category-knowledge pruning -> fine-tune ->
IoU-aware redundancy elimination -> evaluation -> bundle. Until its parts land this command says so plainly
instead of pretending to run.
"""
import sys


def main() -> int:
    print(
        "clean_ros compress: the compression pipeline is not built yet.\n"
        "What exists today: the KITTI/simulator data pipeline, geometry and KITTI evaluation, the detector models\n"
        "(see README, 'Status'). Follow the roadmap in the README for what comes next.",
        file=sys.stderr,
    )
    return 3


if __name__ == "__main__":
    sys.exit(main())
