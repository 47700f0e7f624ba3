"""Speed and memory of hf_mm side by side with the reference implementations (`python -m benchmarks.run`).

The reference libraries are benchmark dependencies (like test dependencies): they are imported through
tests/reference_imports.py's stand-ins, never by hf_mm itself.
"""
