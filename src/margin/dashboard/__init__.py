"""The web dashboard served by the gateway at `/dashboard` (see views.py; auth rules in auth.py)."""
