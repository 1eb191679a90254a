"""python -m inferencepool.simulate: the same as `inferencepool simulate`."""

import sys

from inferencepool.simulate.cli import main

sys.exit(main())
