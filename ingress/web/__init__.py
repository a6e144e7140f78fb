"""The web UI served by the ingress (issue 9): server-rendered pages whose scripts call the
same JSON API users call, authenticated by a session cookie (ingress/auth.py) and CSRF-checked."""
