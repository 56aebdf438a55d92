"""policies/picospec"""
