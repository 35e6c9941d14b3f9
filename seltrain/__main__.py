import sys

from seltrain.cli import main

sys.exit(main())
