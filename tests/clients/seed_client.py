import json
import os
import sys

import requests

response = requests.post(
    "http://localhost:45678/v1/generate_response",
    headers={
        "Content-Type": "application/json",
        "Authorization": f"Bearer {os.environ['TIGER_API_KEY']}",
    },
    json={
        "model": "Llama-3.1-8b",
        "messages": [{"role": "user", "content": "Hello!"}],
        "stream": True,
    },
    stream=True,
)
# Check if request was successful
if response.status_code != 200:
    print(f"HTTP Error: {response.status_code} - {response.text}", file=sys.stderr)
    sys.exit(1)
try:
    for line in response.iter_lines():
        if line:
            try:
                chunk = json.loads(line)
                if chunk.get("type") == "info":
                    print(f"Info: {chunk['message']}")
                elif chunk.get("type") == "delta":
                    print(chunk["delta"], end="", flush=True)
                elif chunk.get("type") == "stop":
                    print(f"\nGeneration complete: {chunk['usage']}")
                elif chunk.get("type") == "error":
                    print(f"Error: {chunk['message']}", file=sys.stderr)
                    break  # Stop processing on error
            except json.JSONDecodeError:
                print(f"Error: Failed to parse JSON chunk: {line}", file=sys.stderr)
                continue
except requests.exceptions.RequestException as e:
    print(f"Request error: {e}", file=sys.stderr)
    sys.exit(1)
