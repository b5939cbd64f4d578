"""The steps of the request path, one module each; `margin.pipeline.flow` lists them in order."""
