"""Benchmarks: droprun against the original scripts and the physical limit, side by side.

``python -m bench`` runs every scenario of issue 6 on a real sshd on 127.0.0.1 and real
agent processes, and prints one table (droprun figure, baseline figure, ratio, target).
``--quick`` runs a smaller version of each scenario; ``--json FILE`` writes the table too.
"""
