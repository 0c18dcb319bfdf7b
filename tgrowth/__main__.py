import sys

from tgrowth.cli import main

sys.exit(main())
