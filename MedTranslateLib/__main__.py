"""``python -m MedTranslateLib`` is the ``medtranslate`` command."""

import sys

from MedTranslateLib.cli.main import main

sys.exit(main())
