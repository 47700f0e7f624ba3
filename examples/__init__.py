"""Runnable examples: the demo (`python -m examples.demo`) and CoCa fine-tuning (`python -m examples.train_coca`)."""
