"""The pure-ASGI middleware stack; app.py lists it in order."""
