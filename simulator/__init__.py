"""The discrete-event twin: schemas, acceptance/link/payload models, SimPy engine, results."""
