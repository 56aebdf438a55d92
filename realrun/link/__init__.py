"""realrun/link"""
