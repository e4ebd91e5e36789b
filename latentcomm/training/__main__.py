"""``python -m latentcomm.training --objective NAME``: see :data:`latentcomm.training.OBJECTIVES`."""

from latentcomm.training import main

raise SystemExit(main())
