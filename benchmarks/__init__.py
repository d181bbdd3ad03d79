"""The lab: every benchmark, experiment driver and demo behind results/, apart from the product.

Not installed and not in the Bento; run from a checkout as ``python -m benchmarks.<area>.<name>``
(or the Makefile's bench targets). benchmarks/README.md lists each one: its question, command,
time and output file. Benchmarks import the product; nothing in the product imports them.
"""
