"""The contract both protocols share: request parameters (validated once), the
events streams are made of, the status table, and their protobuf form.

Imports nothing of the engine or the ML stack, so the gateway and the client use it.
Only `wire` imports the generated protobuf code.
"""
