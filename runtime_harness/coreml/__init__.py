"""Core ML on any machine: a reference interpreter for the ML programs lgc emits (Linux CI has no ``predict``)."""
