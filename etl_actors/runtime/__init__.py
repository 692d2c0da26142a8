"""The runtime: supervisor and stage workers as plain classes.

:mod:`.actors` alone imports Ray and makes them actors; :mod:`.local` runs the same
classes in one process for fast tests.
"""
