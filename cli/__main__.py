"""Entry point: `python -m cli <command>` from the pack's folder."""
import sys

from .main import main

sys.exit(main())
