"""``python -m trainmap``: the same as the ``trainmap`` command."""

from trainmap.trainer.cli import main

raise SystemExit(main())
