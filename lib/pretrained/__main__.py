"""``python -m lib.pretrained``: the command line of lib.pretrained.cli."""
import sys

from lib.pretrained.cli import main

sys.exit(main())
