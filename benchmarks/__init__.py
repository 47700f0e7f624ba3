"""Speed and memory of hf_mm side by side with the reference implementations (`python -m benchmarks.run`).

The reference libraries are benchmark dependencies (like test dependencies): they are imported with
the stand-ins of conversion/reference_imports.py (shared with the conversion CLI and the tests), never by hf_mm
itself.
"""
