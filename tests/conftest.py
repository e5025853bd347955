"""Shared pytest setup: tests/ on sys.path for the small support modules."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
