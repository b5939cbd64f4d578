"""Thin HTTP routers: read and check the request, hand it to the pipeline, write the answer."""
