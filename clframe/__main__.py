import sys

from clframe.cli import main

sys.exit(main())
