"""``vidcom2 serve``: a loaded model behind an OpenAI-compatible HTTP API, and its client.

protocol.py reads and checks a chat-completions request and writes responses and stream
chunks; media.py turns a request's video URL into a local file under the rules of the server;
scheduler.py queues requests into engine batches and keeps compressed prefixes in a bounded
LRU cache; app.py holds the HTTP routes; metrics.py the Prometheus counters; wire.py the
answer's statistics as JSON (and back, on the client, without torch); client.py is what
``ask --server`` and ``batch --server`` use; ray.py runs the same app on Ray Serve.
"""

from __future__ import annotations

# The request and response field that carries vidcom2's own settings and statistics (what the
# official openai client sends as ``extra_body={"vidcom2": {...}}``).
EXTRA_FIELD = "vidcom2"
