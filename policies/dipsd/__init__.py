"""policies/dipsd"""
