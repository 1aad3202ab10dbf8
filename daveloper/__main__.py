import sys

from daveloper.cli import main

sys.exit(main())
