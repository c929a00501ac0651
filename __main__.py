"""`python <this folder> run --photo ... --prompt ... --out ...`: the pack's command line (cli/)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cli.main import main  # noqa: E402

sys.exit(main())
