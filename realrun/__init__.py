"""The real testbed: the same policy objects on a real cloud server and edge client.

So far: the cloud verification server (`realrun.cloud.server`, FastAPI + uvicorn around one
llama.cpp target, `realrun.cloud.llama_target`), its msgpack protocol (`realrun.protocol`) and a small
synchronous client (`realrun.edge.client`). Needs the `realrun` and `models` extras.
"""
