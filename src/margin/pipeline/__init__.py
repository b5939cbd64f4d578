"""The request pipeline (DESIGN §3): an ordered list of small stages composed once at start-up."""
