"""The real testbed: the same policy objects on a real cloud server and edge client.

The cloud verification server (`realrun.cloud`: FastAPI + uvicorn around one target model
behind realrun.cloud.backend.TargetBackend), its msgpack protocol (`realrun.protocol`), the
edge (`realrun.edge`: executor and client), link shaping (`realrun.link`) and the runs that
tie them together (`realrun.testbed`, `realrun.local`). Needs the `realrun` and `models`
extras.
"""
