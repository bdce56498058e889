"""`python -m clean_ros.build_engine` forwards to clean_ros.tools.build_engine.main (lives in clean_ros/tools/).

Only a forward, so the documented command keeps working; import from clean_ros.tools.build_engine.
"""
import sys

from clean_ros.tools.build_engine import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
