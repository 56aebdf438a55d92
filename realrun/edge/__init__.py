"""realrun/edge"""
