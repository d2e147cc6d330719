"""`python3 -m app.eval`: see app/eval/__init__.py."""
import sys

from app.eval.cli import main

sys.exit(main())
