"""realrun/cloud"""
