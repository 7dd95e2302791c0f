"""The chaos suite: real bridges, brokers and sandbox under scheduled faults, judged by a loss checker.

Run at full size with ``scripts/chaos`` (``python -m tests.chaos --help``); CI runs the reduced scenario
(``tests/chaos/test_chaos.py``). See RELIABILITY.md for the figures and what each verdict means.
"""
