"""The contract both protocols share: request parameters (validated once), response
formats and tools, the tool-call text format, the key file, the events streams are
made of, the status table, and their protobuf form.

Imports nothing of the engine or the ML stack, so the gateway and the client use it.
Only `wire` imports the generated protobuf code.
"""
