"""`python -m harness.cli`: the `mtl-bench` command."""
import sys

from harness.cli import main

sys.exit(main())
