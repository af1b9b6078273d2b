"""Token mixers: one file per family, one yaml each under ``conf/mixer/``.

The contract every mixer follows is in :mod:`mixers.contract`.
"""
