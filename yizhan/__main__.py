import sys

from yizhan.cli import main

sys.exit(main())
