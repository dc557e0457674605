import sys

from shield_ps.cli import main

sys.exit(main())
