"""`mtl-bench train` with a different seed on each rank: its task sampler drifts out of step."""
import os
import sys

from harness.cli import main

sys.exit(main(sys.argv[1:] + ["--seed", os.environ["RANK"]]))
