"""The runner: one process per loaded model, speaking llama-server's HTTP protocol.

`python -m app.runner --model PATH --port N [...]` loads the model while
`/health` reports progress, then serves completions from a batched decode loop.
"""
