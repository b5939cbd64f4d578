"""The request path (DESIGN §3): `flow.py` lists the steps, `steps/` holds one module per step."""
