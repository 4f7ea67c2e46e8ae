"""``python -m exporter`` runs the exporter, as the ``exec-exporter`` command does."""

import sys

from .cli import main

sys.exit(main())
