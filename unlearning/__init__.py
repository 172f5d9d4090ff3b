"""Unlearning in one place: the methods that answer forget requests (``methods.py``, ``repnoise.py`` and
their loss pieces), the retrain oracle (``oracle.py``), the unlearning metrics (``metrics.py``), the
evaluator that compares an unlearned model with the model before the request and with the oracle
(``evaluator.py``) and its plots. Every module here is imported by :func:`clframe.registry.load_plugins`."""
