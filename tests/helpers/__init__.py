"""What the tests share, apart from the test modules: servers and relays (``support``), emulated pods
(``pods``, ``pod_runner``) and the task modules that those pods and subprocesses run (``*_child``).

This file imports nothing, so ``plain_child`` and ``pod_runner`` still run without the plugin.
"""
