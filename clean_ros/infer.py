"""`python -m clean_ros.infer` forwards to clean_ros.tools.infer.main (offline inference; lives in clean_ros/tools/).

Only a forward, so the documented command keeps working; import from clean_ros.tools.infer.
"""
import sys

from clean_ros.tools.infer import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
