"""`python -m app` runs the loam command line."""

from app.cli import main

raise SystemExit(main())
