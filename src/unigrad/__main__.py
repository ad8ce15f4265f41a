import sys

from unigrad.cli import main

sys.exit(main())
