"""The engine: worker processes fill a shared-memory ring run by a coordinator.

Nothing here is public API; :class:`shmqueue.Queue` is its face. Data flows one way:
coordinator -> worker -> ring -> batch. See protocol.py for the written protocol.
"""
