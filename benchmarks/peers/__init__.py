"""Peers: the same counting job done with the tools users would pick instead.

Every module here runs in the peers' own virtualenv (see :mod:`benchmarks.peers.env`), never
in kafkaconsole's: each imports only the standard library, its peer and this package.
"""
