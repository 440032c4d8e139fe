"""The ``medtranslate`` command line."""
