import sys

from imagenet_repro.cli import main

sys.exit(main())
