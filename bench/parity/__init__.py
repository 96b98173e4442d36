"""Parity harness: the repo's Keras recipes beside independent PyTorch implementations.

`python -m bench.parity.run` trains both on the same split for the same epochs and prints
the two curves side by side. PyTorch is a test dependency only; nothing here is imported
by the training package.
"""
