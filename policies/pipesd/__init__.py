"""policies/pipesd"""
