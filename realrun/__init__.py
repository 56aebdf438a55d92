"""The real testbed: the same policy objects on a real cloud server and edge client.

Planned in the realrun issue; nothing here yet.
"""
