import sys

from cloudweave.cli import main

sys.exit(main())
