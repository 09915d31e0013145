"""Engine backends behind one interface (runtime/engines/base.py)."""
