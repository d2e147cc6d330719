"""`python3 -m tests`: the seed's documented test command, running the same pytest suite."""
import sys

import pytest

if __name__ == "__main__":
    sys.exit(pytest.main(["tests", *sys.argv[1:]]))
